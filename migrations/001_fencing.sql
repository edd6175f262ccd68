-- Fencing tokens: one sequence for every key. A token drawn after a grant is
-- larger than every token drawn before it, so it strictly increases per key.
CREATE SEQUENCE IF NOT EXISTS {{schema}}.fence_token AS bigint MINVALUE 1 NO CYCLE;
