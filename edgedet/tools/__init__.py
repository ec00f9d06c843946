"""Model tools: ``quantize/``, ``prune/``, ``convert/`` (each with a public face in its
``__init__``), and ``evaluate``, ``bench``, ``calibration``. They use the core; the core never
imports them."""
