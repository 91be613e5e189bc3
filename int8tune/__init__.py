"""int8tune: get an int8 Caffe model that behaves like its fp32 original.

The package is the core; the user-editable files (test_utils.py, evaluation_utils.py) live beside it
and are passed in by main.py, never imported from here.
"""

__version__ = "0.1.0"
