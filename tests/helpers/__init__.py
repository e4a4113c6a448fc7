"""The tests' helper modules: tiny configs, models, datasets and steps that configs name by import
path (`helpers.loop:tiny`), and writers of run files and checkpoints. conftest.py puts tests/ on
sys.path and trusts this package (TRAINER_TRUST=helpers) for the whole session, subprocesses
included."""
