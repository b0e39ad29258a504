-- Exactly-once streaming ingest: the last chunk sequence committed for each client stream.
-- A chunk's points and its stream's new sequence commit in one transaction, so a chunk
-- resent after a reconnect is recognised and not written twice.
CREATE TABLE ingest_streams (
    stream_id     text   PRIMARY KEY,
    last_sequence bigint NOT NULL DEFAULT 0,
    updated_at    bigint NOT NULL DEFAULT 0
);
