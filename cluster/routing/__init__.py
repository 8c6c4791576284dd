"""Routing: pure policies over a snapshot of the workers, one per module, plus the bounded state they read
(prefix index, session pins). The router owns the state; policies only read it and return a Decision."""
