"""Model cards: ``render`` writes a card from a run's recipe and records (used by training, below it);
``rebuild`` rewrites an existing checkpoint's card from its run records (above training). Nothing is
imported here, so the two layers stay apart."""
