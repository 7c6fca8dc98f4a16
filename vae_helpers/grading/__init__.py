"""The grader: the instructor's side, on top of the library and the course.

``grader`` (one submission, in the sandbox, against a rubric and a reference run),
``batch`` (many submissions, locally or on dask), ``sandbox`` (bubblewrap),
``rubric`` (and the homework's ``rubric.toml``), ``recorded`` (records read back as
untrusted input), ``checks``, ``static`` (no pre-made VAE, read before anything runs),
``hidden`` and ``hidden_child`` (the student module on inputs drawn at grading time),
``recompute`` (the metrics and figures the grader draws itself from the recorded
weights), ``compare`` and ``report`` (the verdicts and the HTML pages), ``gradebook``
(``grades.csv`` and Gradescope's ``results.json``) and ``gradescope`` (the grader as a
Gradescope autograder). Nothing in the library or
the course imports it. Modules are imported explicitly, e.g.
``from vae_helpers.grading import grader``.
"""
