-- Plain PostgreSQL: txn_daily becomes a table maintained by a statement trigger over the
-- rows actually inserted (transition table), so a 30-day read touches days, not raw
-- transactions. Same name and columns as TimescaleDB's continuous aggregate.
DROP VIEW txn_daily;

CREATE TABLE txn_daily (
    bucket    timestamptz   NOT NULL,
    device_id text          NOT NULL,
    type      text          NOT NULL,
    financial boolean       NOT NULL,
    result    text          NOT NULL,
    on_us     boolean       NOT NULL,
    txns      bigint        NOT NULL,
    amount    numeric       NOT NULL,
    fee       numeric       NOT NULL,
    PRIMARY KEY (bucket, device_id, type, financial, result, on_us)
);

INSERT INTO txn_daily
SELECT date_trunc('day', ts, {{timezone}}), device_id, type, financial, result, on_us,
       count(*), sum(amount), sum(fee)
FROM transactions
GROUP BY 1, 2, 3, 4, 5, 6;

CREATE FUNCTION txn_daily_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO txn_daily AS d
    SELECT date_trunc('day', ts, {{timezone}}), device_id, type, financial, result, on_us,
           count(*), sum(amount), sum(fee)
    FROM new_rows
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6  -- one lock order for concurrent collectors
    ON CONFLICT (bucket, device_id, type, financial, result, on_us) DO UPDATE
    SET txns = d.txns + excluded.txns, amount = d.amount + excluded.amount,
        fee = d.fee + excluded.fee;
    RETURN NULL;
END
$$;

CREATE TRIGGER transactions_txn_daily AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION txn_daily_add();
