-- Datasets and what runs consume and produce; logged models with their params, tags and
-- latest metrics per dataset. lifecycle_stage and status hold the trackd.v1 enum numbers.

-- A dataset is stored once per experiment by (name, digest); its other fields are those of
-- its first logging.
CREATE TABLE datasets (
    dataset_pk    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id bigint NOT NULL REFERENCES experiments (experiment_id),
    name          text   NOT NULL,
    digest        text   NOT NULL,
    source_type   text   NOT NULL,
    source        text   NOT NULL,
    schema        text   NOT NULL,
    profile       text   NOT NULL,
    UNIQUE (experiment_id, name, digest)
);

-- One row per (run, dataset) the run consumed; the primary key serves the search's
-- EXISTS by run.
CREATE TABLE run_dataset_inputs (
    run_pk     bigint NOT NULL REFERENCES runs (run_pk) ON DELETE CASCADE,
    dataset_pk bigint NOT NULL REFERENCES datasets (dataset_pk),
    PRIMARY KEY (run_pk, dataset_pk)
);
CREATE INDEX run_dataset_inputs_dataset_idx ON run_dataset_inputs (dataset_pk);

-- Tags of one input (such as mlflow.data.context = training).
CREATE TABLE run_dataset_input_tags (
    run_pk     bigint NOT NULL,
    dataset_pk bigint NOT NULL,
    key        text   NOT NULL,
    value      text   NOT NULL,
    PRIMARY KEY (run_pk, dataset_pk, key),
    FOREIGN KEY (run_pk, dataset_pk) REFERENCES run_dataset_inputs (run_pk, dataset_pk)
        ON DELETE CASCADE
);
CREATE INDEX run_dataset_input_tags_key_value_idx ON run_dataset_input_tags (key, value)
    INCLUDE (run_pk);

CREATE TABLE logged_models (
    model_pk          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- "m-" followed by 32 lowercase hex digits.
    model_id          text     NOT NULL UNIQUE,
    experiment_id     bigint   NOT NULL REFERENCES experiments (experiment_id),
    name              text     NOT NULL,
    model_type        text     NOT NULL,
    source_run_id     uuid     REFERENCES runs (run_id),
    status            smallint NOT NULL,
    status_message    text     NOT NULL,
    creation_timestamp     bigint NOT NULL,
    last_updated_timestamp bigint NOT NULL,
    artifact_uri      text     NOT NULL,
    lifecycle_stage   smallint NOT NULL DEFAULT 1,
    deleted_time      bigint
);
-- The default search order: live models of an experiment, newest first.
CREATE INDEX logged_models_experiment_creation_idx
    ON logged_models (experiment_id, creation_timestamp DESC, model_id)
    WHERE lifecycle_stage = 1;
CREATE INDEX logged_models_source_run_idx ON logged_models (source_run_id)
    WHERE source_run_id IS NOT NULL;

CREATE TABLE logged_model_params (
    model_pk bigint NOT NULL REFERENCES logged_models (model_pk) ON DELETE CASCADE,
    key      text   NOT NULL,
    value    text   NOT NULL,
    PRIMARY KEY (model_pk, key)
);
CREATE INDEX logged_model_params_key_value_idx ON logged_model_params (key, value)
    INCLUDE (model_pk);

CREATE TABLE logged_model_tags (
    model_pk bigint NOT NULL REFERENCES logged_models (model_pk) ON DELETE CASCADE,
    key      text   NOT NULL,
    value    text   NOT NULL,
    PRIMARY KEY (model_pk, key)
);
CREATE INDEX logged_model_tags_key_value_idx ON logged_model_tags (key, value)
    INCLUDE (model_pk);

-- The latest point (greatest (step, timestamp, value), NaN above every number) of each
-- (model, key, dataset) logged with the model's id; '' '' for points without a dataset.
-- The points themselves live in the logging run's series (metric_points).
CREATE TABLE logged_model_metrics (
    model_pk       bigint NOT NULL REFERENCES logged_models (model_pk) ON DELETE CASCADE,
    key            text   NOT NULL,
    dataset_name   text   NOT NULL,
    dataset_digest text   NOT NULL,
    latest_step    bigint NOT NULL,
    latest_ts      bigint NOT NULL,
    latest_value   float8 NOT NULL,
    -- The run that logged the latest point.
    run_pk         bigint NOT NULL REFERENCES runs (run_pk),
    PRIMARY KEY (model_pk, key, dataset_name, dataset_digest)
);
CREATE INDEX logged_model_metrics_key_value_idx ON logged_model_metrics (key, latest_value)
    INCLUDE (model_pk);
CREATE INDEX logged_model_metrics_run_idx ON logged_model_metrics (run_pk);

-- Models a run consumed (any experiment's) and produced (its own experiment's).
CREATE TABLE run_model_inputs (
    run_pk   bigint NOT NULL REFERENCES runs (run_pk) ON DELETE CASCADE,
    model_pk bigint NOT NULL REFERENCES logged_models (model_pk),
    PRIMARY KEY (run_pk, model_pk)
);
CREATE INDEX run_model_inputs_model_idx ON run_model_inputs (model_pk);

CREATE TABLE run_model_outputs (
    run_pk   bigint NOT NULL REFERENCES runs (run_pk) ON DELETE CASCADE,
    model_pk bigint NOT NULL REFERENCES logged_models (model_pk),
    step     bigint NOT NULL,
    PRIMARY KEY (run_pk, model_pk, step)
);
CREATE INDEX run_model_outputs_model_idx ON run_model_outputs (model_pk);
