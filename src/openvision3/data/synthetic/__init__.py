"""The synthetic world: procedurally drawn scenes with exact captions, class labels and
attributes (``world.py``), registered as the data source ``synthetic`` (``source.py``), and the
frozen-token cache of a finished demo run for the downstream families (``tokens.py``). Every
family's demo and the tests train on it; nothing here needs a download."""
