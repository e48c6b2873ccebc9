"""Synthetic sets: ``provenance`` (the one owner of ``generation.json``), ``generate`` (drawing a set,
sharded over processes), ``curate``, ``merge`` and ``match``. Nothing is imported here."""
