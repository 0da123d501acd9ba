"""The shapes world: procedural scenes, the bundled mini models' training recipes, the judge.

Used by the demo, the benchmarks and the training commands; the library core never imports it.
"""
