"""Inference beyond one process: the tagger as a Ray Serve deployment (``--engine ray``).

``config`` (the ``inference:`` section) imports nothing heavy; ``engine`` and
``deployment`` import Ray, so only a run that chooses ``engine: ray`` loads it
(``import soundwatch.client`` and a plain ``soundwatch run`` never do). See docs/scale.md.
"""
