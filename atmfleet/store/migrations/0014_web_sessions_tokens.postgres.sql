-- Plain PostgreSQL: one device's days of txn_daily (the console's device page) without
-- walking every device's rows of those days (the primary key leads with the bucket).
CREATE INDEX txn_daily_device_bucket ON txn_daily (device_id, bucket);
