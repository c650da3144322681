-- A MariaDB/MySQL table that larder-sidecar's database source polls
-- (docs/sidecar.md, "Database polling"; MariaDB specifics under "MariaDB and
-- MySQL"). Reference data: a user's plan, credit limit and verification,
-- written by an application, read into the segment's table `users` by
-- examples/database/mariadb.yaml.
--
--   mariadb features < examples/database/mariadb.sql
--
-- What the source needs from the table:
-- * a cursor that moves forward whenever a row changes: updated_at, kept by
--   the server itself (ON UPDATE), with microseconds so that few rows share
--   a value; TIMESTAMP is stored in UTC, so no session time zone can shift it
--   (a DATETIME cursor is read as UTC too: write it in UTC);
-- * a tie column that orders rows sharing a cursor value: the primary key;
-- * an index on (cursor, tie), which every poll's ORDER BY and range use;
-- * deletes as a soft-delete flag: a row removed with DELETE is never seen
--   again by a poller, so the segment would keep it.

CREATE TABLE IF NOT EXISTS user_profile (
  id           BIGINT AUTO_INCREMENT PRIMARY KEY,
  user_id      VARCHAR(64) NOT NULL UNIQUE,
  plan         VARCHAR(16) NOT NULL,
  credit_limit DOUBLE NOT NULL,                 -- FLOAT would do; DECIMAL is refused
  orders_30d   INT NOT NULL DEFAULT 0,
  verified     BOOL NOT NULL DEFAULT FALSE,     -- TINYINT(1): a bool field
  updated_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  deleted      BOOL NOT NULL DEFAULT FALSE,
  KEY by_cursor (updated_at, id)
);

-- The sidecar's account reads and nothing more. Its password goes in the
-- file or variable the config names (password_file, password_env).
-- CREATE USER IF NOT EXISTS 'larder'@'10.%' IDENTIFIED BY '...';
-- GRANT SELECT ON features.user_profile TO 'larder'@'10.%';

INSERT INTO user_profile (user_id, plan, credit_limit, orders_30d, verified) VALUES
  ('user:1', 'free', 0, 0, FALSE),
  ('user:2', 'pro', 2500, 14, TRUE),
  ('user:3', 'pro', 1200.5, 3, TRUE),
  ('user:4', 'team', 10000, 41, TRUE)
ON DUPLICATE KEY UPDATE plan = VALUES(plan), credit_limit = VALUES(credit_limit),
  orders_30d = VALUES(orders_30d), verified = VALUES(verified), deleted = FALSE;

-- An update moves the row's cursor (ON UPDATE), so the next poll reads it.
UPDATE user_profile SET plan = 'pro', credit_limit = 500 WHERE user_id = 'user:1';

-- A delete, as the source sees it: the flag set, the cursor moved.
UPDATE user_profile SET deleted = TRUE WHERE user_id = 'user:4';
