"""Helpers shared by test modules (importable as ``support.*``: pytest puts ``tests/`` on ``sys.path``
through ``pythonpath`` in pyproject's ``[tool.pytest.ini_options]``).

Fixtures stay in the ``conftest.py`` files; plain helpers live here, so that a test module never
imports a ``conftest`` (which breaks as soon as two test folders are collected in one run).

* ``support.media``  tiny synthetic clips in every container (``CONTAINERS``, ``moving_frames``, ``write_clip``)
* ``support.probe``  ``CountingEncoder``, ``tiny_encoder`` (timm ViT-Tiny at 32 px, counts forward calls)
* ``support.train``  ``SIZE``, ``smooth_images``, ``fan_validity``, ``tiny_cfg`` (seconds-long CPU training runs)
"""
