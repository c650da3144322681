-- Reference data for the database polling source (docs/sidecar.md,
-- "Database polling"): a table of user plans, kept current by a trigger on
-- updated_at, with a soft-delete flag. Run it with psql against any
-- PostgreSQL 15, then start the sidecar with sidecar.yaml:
--
--   psql "postgresql://larder@127.0.0.1:5499/larder_test" -f examples/database/postgres.sql
--   larder-sidecar --config examples/database/sidecar.yaml
--
-- Re-running it starts over (the table is dropped first).

DROP TABLE IF EXISTS user_plans;
CREATE TABLE user_plans (
  id          bigserial PRIMARY KEY,          -- the tie: unique among rows of one updated_at
  user_id     text NOT NULL UNIQUE,           -- the key
  plan        text NOT NULL,
  seats       bigint NOT NULL,
  monthly_fee double precision NOT NULL,
  trial       boolean NOT NULL DEFAULT false,
  is_deleted  boolean NOT NULL DEFAULT false, -- soft delete: a DELETE is never seen by a poller
  updated_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- The poller reads in (updated_at, id) order.
CREATE INDEX user_plans_cursor ON user_plans (updated_at, id);

-- Every change moves the row to the end of the cursor order.
CREATE OR REPLACE FUNCTION user_plans_touch() RETURNS trigger AS $$
BEGIN
  NEW.updated_at := clock_timestamp();
  RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER user_plans_touch BEFORE UPDATE ON user_plans
  FOR EACH ROW EXECUTE FUNCTION user_plans_touch();

-- 1000 users; many rows share one updated_at (one statement): the tie
-- column keeps pages exact.
INSERT INTO user_plans (user_id, plan, seats, monthly_fee, trial, updated_at)
SELECT 'user-' || i,
       (ARRAY['free', 'team', 'business'])[1 + i % 3],
       1 + i % 50,
       (i % 3) * 12.5,
       i % 10 = 0,
       timestamptz '2026-01-01 00:00:00+00'
FROM generate_series(1, 1000) AS i;

-- Upgrades (the trigger sets updated_at).
UPDATE user_plans SET plan = 'business', seats = seats + 10, monthly_fee = 25 WHERE user_id IN ('user-3', 'user-6');
-- A cancellation: the key leaves the Larder table.
UPDATE user_plans SET is_deleted = true WHERE user_id = 'user-9';
