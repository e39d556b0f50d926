"""What past outcomes teach: the rules that turn outcomes into heuristics and anti-patterns
(learner), the track record of strategies, the signals of a memory's own record, and the
lifecycle (decay, consolidation, archive, restore). Depends on storage and indexes, never on ranking."""
