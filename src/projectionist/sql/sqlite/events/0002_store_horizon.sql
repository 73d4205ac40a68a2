-- The PostgreSQL store's own horizon (appenders announce themselves, readers wait only for
-- them). SQLite runs one write transaction at a time, so positions already commit in order
-- and nothing changes here: this number keeps both backends' schema versions in step.
SELECT 1;
