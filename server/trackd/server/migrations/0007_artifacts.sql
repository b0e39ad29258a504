-- Artifacts: the index of the files of runs and logged models. The bytes live in the
-- artifact store (a directory or an S3 bucket) under `object_key`, one immutable object
-- per upload; a row exists only once its object is durably stored and its SHA-256 checked.

-- owner_kind: 1 a run (owner_pk is runs.run_pk), 2 a logged model (logged_models.model_pk).
CREATE TABLE artifacts (
    owner_kind   smallint NOT NULL,
    owner_pk     bigint   NOT NULL,
    -- '/'-separated, relative; bytewise order ("C") so that a directory is a range scan.
    path         text COLLATE "C" NOT NULL,
    object_key   text     NOT NULL,
    size         bigint   NOT NULL,
    sha256       text     NOT NULL,
    content_type text     NOT NULL,
    row_count    bigint,
    modified_ms  bigint   NOT NULL,
    PRIMARY KEY (owner_kind, owner_pk, path)
);

-- Uploads in progress: their bytes are staged under the store's staging directory by
-- upload id. A row older than the upload TTL is abandoned and swept with its file.
CREATE TABLE artifact_uploads (
    upload_id     uuid     PRIMARY KEY,
    owner_kind    smallint NOT NULL,
    owner_pk      bigint   NOT NULL,
    path          text COLLATE "C" NOT NULL,
    declared_size bigint,
    declared_sha256 text   NOT NULL,
    started_ms    bigint   NOT NULL,
    touched_ms    bigint   NOT NULL
);
CREATE INDEX artifact_uploads_touched_idx ON artifact_uploads (touched_ms);

-- Objects no artifact refers to any more (replaced, deleted, or of a purged owner): the
-- sweep removes them from the store after a grace period (a download may still read one).
CREATE TABLE artifact_garbage (
    object_key text   PRIMARY KEY,
    since_ms   bigint NOT NULL
);
CREATE INDEX artifact_garbage_since_idx ON artifact_garbage (since_ms);
