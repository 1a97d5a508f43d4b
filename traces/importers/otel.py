"""placeholder"""
def import_files(paths, seed=0, warn=None):
    raise ValueError("otel: not yet")
