"""Benchmarks: pipeobs against the engines and logging stacks users would pick instead (issue 6).

Run them with one command from the repository root: ``python bench/run.py`` (``--smoke`` for the
tiny CI version, ``--only NAME`` for one benchmark). See ``bench/README.md``.
"""
