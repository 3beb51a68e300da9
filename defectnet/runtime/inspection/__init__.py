"""The inspection line: anything a line sends in becomes exactly one record.

* :mod:`.validation` -- the one input rule (bytes, files, arrays, tensors -> uint8 image or
  an :class:`InputError` with a reason code);
* :mod:`.records` -- the record (:class:`InspectionResult`) and the post-filter;
* :mod:`.inspector` -- :class:`Inspector`: batching, pipelining, deadlines, back-pressure;
* :mod:`.metrics` -- its Prometheus metrics; :mod:`.review` -- review images;
* :mod:`.batch` -- ``defectnet-infer FILES_OR_FOLDERS``: a fixed list of inputs, resumable;
* :mod:`.watch` -- ``defectnet-infer --watch``: a folder as the input stream;
* :mod:`.record_log` -- the append-only JSONL record file both write (``docs/record.schema.json``);
  :mod:`.folders` -- which entries of a folder are inputs.
"""

from defectnet.runtime.inspection.inspector import Inspector, InspectorBusyError, InspectorClosedError
from defectnet.runtime.inspection.records import InspectionResult, PostFilter
from defectnet.runtime.inspection.validation import InputError, InputLimits, Reason, to_image

__all__ = ["InputError", "InputLimits", "InspectionResult", "Inspector", "InspectorBusyError",
           "InspectorClosedError", "PostFilter", "Reason", "to_image"]
