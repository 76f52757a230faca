"""The labelled detection evaluation: a real gateway, compliant and abusive actors with ground
truth, and how the detectors did against them (`make detection-eval`, docs/detection.md)."""
