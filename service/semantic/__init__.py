"""The semantic response cache: its engine, bookkeeping, embedding, restore and wiring."""
