"""Deterministic synthetic defect data imitating DefectNet's two data sets.

``fabric``: grey-blue twill, 612x250 by default (the real 2446x1000 at 1/4), 44% normal.
``bottle``: liquor-bottle cap (top view) and label (side view) scenes, 658x492, 25% normal.

Library use::

    from defectnet.data.synthetic import SynthParams, generate, KINDS
    params = SynthParams("fabric", images=100, normal_share=0.44, seed=0, size=(612, 250))
    summary = generate(params, KINDS["fabric"], "data/fabric")

or render one image in memory: ``KINDS["bottle"].render(image_rng(seed, index), (w, h), True)``
(a fourth argument ``benign_rate``, default 1, scales the benign, unannotated irregularities of
real material: slubs, lint, dye bands, ... on fabric, glare and dust on bottles; docs/data.md).
"""

from __future__ import annotations

from defectnet.data.synthetic import bottle, fabric
from defectnet.data.synthetic.common import (
    GENERATOR_NAME,
    GENERATOR_VERSION,
    Defect,
    KindSpec,
    Summary,
    SynthParams,
    generate,
    image_rng,
    normal_flags,
    parse_size,
    split_is_test,
)

#: The generator kinds by name.
KINDS: dict[str, KindSpec] = {fabric.SPEC.name: fabric.SPEC, bottle.SPEC.name: bottle.SPEC}

__all__ = [
    "GENERATOR_NAME", "GENERATOR_VERSION", "KINDS", "Defect", "KindSpec", "Summary", "SynthParams",
    "generate", "image_rng", "normal_flags", "parse_size", "split_is_test",
]
