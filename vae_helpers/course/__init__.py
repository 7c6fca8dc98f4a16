"""The course: what the notebooks and the students use, on top of the library.

``notebook`` (set-up, run directories, printed checks), ``record`` (what a homework
notebook records for comparison and grading), ``pipeline`` (the notebooks executed in
order with papermill, and publishing them), ``execution`` and ``watchdog`` (one notebook
in a child process, within limits) and ``student`` (handouts with the solutions
stubbed). It uses the library (``vae_helpers``) and never the grader
(``vae_helpers.grading``). Modules are imported explicitly, e.g.
``from vae_helpers.course import notebook, record``.
"""
