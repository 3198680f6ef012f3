"""Support code for the three method modules (stepcoder.py, curriculum.py, sandbox.py): plumbing a student
need not open to learn the method.

    config.py       the trainer's flags: one Config dataclass, --model tiny's defaults, --resume
    models.py       model loading (tiny, 4-bit base + LoRA + value head), the merged sampler, the warm start
    runs.py         the run directory: checkpoints, metrics, curves.png, the summary (python3 -m support.runs RUN)
    evaluation.py   pass@1 and pass@k before and after RL
    display.py      what python curriculum.py and python sandbox.py print; the run's budget line
    distributed.py  several data-parallel processes under torchrun
    problems.py     the problem loader (APPS+ and APPS layouts)
    containment.py  the sandbox's warm workers and contained children
    family.py       the generated family of problems (python3 -m support.family --out DIR)
"""
