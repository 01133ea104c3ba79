"""Pipeline stages: thin command-line wrappers, one module per ``dvc.yaml`` stage.

Each is run as ``python -m realuid.stages.<name> --params params.yaml ...`` with every path given on the
command line; the library does the work.
"""
