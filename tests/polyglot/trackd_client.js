'use strict';
// A Node client of trackd, built the way the README's "Clients in other languages" tells a
// Node user to: @grpc/grpc-js with the protos of protos/ loaded by @grpc/proto-loader
// (longs: String, enums: String, defaults: true, oneofs: true), gRPC's default channel
// limits (no max message options), and the error details read from the
// grpc-status-details-bin trailer with the vendored google/rpc protos (protobufjs).
//
//   node trackd_client.js HOST:PORT [PROTOS_DIR]
//
// It checks what it does with node:assert and exits 1 with the failed check on stderr;
// on success it prints one JSON object on stdout (ids, keys and what it read back), which
// tests/polyglot/test_node_client.py checks again through the Python stubs.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const path = require('node:path');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const [target, protosArg] = process.argv.slice(2);
if (!target) {
  process.stderr.write('usage: node trackd_client.js HOST:PORT [PROTOS_DIR]\n');
  process.exit(2);
}
const PROTOS = path.resolve(protosArg || path.join(__dirname, '..', '..', 'protos'));
const CALL_DEADLINE_MS = 30_000;

// ---------------------------------------------------------------------------------------
// The contract, loaded from protos/.

const definition = protoLoader.loadSync(
  ['trackd/v1/run_service.proto', 'trackd/v1/experiment_service.proto'],
  { includeDirs: [PROTOS], longs: String, enums: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).trackd.v1;
// No channel options: gRPC's default limits (4 MiB received), as any client has.
const experiments = new v1.ExperimentService(target, grpc.credentials.createInsecure());
const runs = new v1.RunService(target, grpc.credentials.createInsecure());

// google.rpc.Code by name -> number, from the loaded contract (enums arrive as names).
const CODE_NUMBERS = Object.fromEntries(
  definition['google.rpc.Code'].type.value.map((v) => [v.name, v.number]),
);

// The error model: google.rpc.Status and its details, from the vendored protos.
const rpcRoot = new protobuf.Root();
rpcRoot.resolvePath = (_origin, target_) => path.join(PROTOS, target_);
// keepCase: the bundled google.protobuf.Any spells its field type_url, so keep proto names.
rpcRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const Status = rpcRoot.lookupType('google.rpc.Status');
const DETAIL_TYPES = {
  'type.googleapis.com/google.rpc.ErrorInfo': rpcRoot.lookupType('google.rpc.ErrorInfo'),
  'type.googleapis.com/google.rpc.BadRequest': rpcRoot.lookupType('google.rpc.BadRequest'),
  'type.googleapis.com/google.rpc.RetryInfo': rpcRoot.lookupType('google.rpc.RetryInfo'),
};

// ---------------------------------------------------------------------------------------
// Helpers.

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + CALL_DEADLINE_MS }, (err, res) =>
      err ? reject(err) : resolve(res),
    );
  });
}

async function failure(promise, what) {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  assert.fail(`${what}: expected an error, the call succeeded`);
}

/** The details of a trackd error, decoded from its grpc-status-details-bin trailer. */
function errorDetails(err) {
  const bins = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  assert.equal(bins.length, 1, `no grpc-status-details-bin in ${err.code} ${err.details}`);
  const status = Status.decode(bins[0]);
  assert.equal(status.code, err.code, 'google.rpc.Status.code differs from the gRPC status');
  const out = { code: err.code, typeUrls: [], errorInfo: null, fieldViolations: null };
  for (const any of status.details) {
    out.typeUrls.push(any.type_url);
    const type = DETAIL_TYPES[any.type_url];
    if (!type) continue; // a detail this client does not know: accepted, ignored
    const detail = type.toObject(type.decode(any.value), { defaults: true });
    if (any.type_url.endsWith('.ErrorInfo')) out.errorInfo = detail;
    if (any.type_url.endsWith('.BadRequest')) out.fieldViolations = detail.field_violations;
  }
  return out;
}

const big = (s) => BigInt(s);
const hex32 = () => crypto.randomBytes(16).toString('hex');
const sameDouble = (a, b) => Object.is(a, b) || (Number.isNaN(a) && Number.isNaN(b));

/** Every page of a metric series through GetMetricHistory. */
async function allHistoryPages(runId, key, maxResults) {
  const points = [];
  const pageSizes = [];
  let pageToken = '';
  for (;;) {
    const page = await unary(runs, 'GetMetricHistory', {
      runId, metricKey: key, maxResults, pageToken,
    });
    assert.equal(page.metricKey, key, 'a history page names its key once, in metric_key');
    for (const m of page.metrics) {
      assert.equal(m.key, '', "a history page's points leave key empty");
      points.push({ step: m.step, timestamp: m.timestamp, value: m.value });
    }
    pageSizes.push(page.metrics.length);
    assert.ok(pageSizes.length < 10_000, 'GetMetricHistory pages do not end');
    if (!page.nextPageToken) break;
    pageToken = page.nextPageToken;
  }
  return { points, pageSizes };
}

/** The whole series through StreamMetricHistory (server streaming, column-wise). */
function streamHistory(runId, key, chunkSize) {
  return new Promise((resolve, reject) => {
    const points = [];
    let messages = 0;
    const call = runs.streamMetricHistory(
      { runId, metricKey: key, chunkSize },
      { deadline: Date.now() + CALL_DEADLINE_MS },
    );
    call.on('data', (chunk) => {
      messages += 1;
      assert.equal(chunk.steps.length, chunk.values.length);
      assert.equal(chunk.timestamps.length, chunk.values.length);
      chunk.values.forEach((value, i) =>
        points.push({ step: chunk.steps[i], timestamp: chunk.timestamps[i], value }),
      );
    });
    call.on('error', reject);
    call.on('end', () => resolve({ points, messages }));
  });
}

/** One StreamMetrics call: write requests, read acknowledgements in order. */
class MetricStream {
  constructor(streamId) {
    this.streamId = streamId;
    this.call = runs.streamMetrics({ deadline: Date.now() + 60_000 });
    this.responses = [];
    this.waiting = null;
    this.error = null;
    this.ended = false;
    this.status = new Promise((resolve) => this.call.on('status', resolve));
    this.call.on('data', (res) => {
      this.responses.push(res);
      this.wake();
    });
    this.call.on('error', (err) => {
      this.error = err;
      this.wake();
    });
    this.call.on('end', () => {
      this.ended = true;
      this.wake();
    });
  }

  wake() {
    if (this.waiting) {
      const w = this.waiting;
      this.waiting = null;
      w();
    }
  }

  async next() {
    while (!this.responses.length) {
      if (this.error) throw this.error;
      if (this.ended) assert.fail('StreamMetrics ended before the acknowledgement');
      await new Promise((resolve) => {
        this.waiting = resolve;
      });
    }
    return this.responses.shift();
  }

  send(sequence, series = []) {
    this.call.write({ streamId: this.streamId, sequence: String(sequence), series });
  }

  /** The handshake: sequence 0; answers the last sequence committed for the stream id. */
  async handshake() {
    this.send(0);
    const res = await this.next();
    assert.equal(res.rejections.length, 0);
    return res.ackedSequence;
  }

  /** Reads acknowledgements until `sequence` is acknowledged; returns their rejections. */
  async ackedThrough(sequence) {
    const rejections = [];
    const acks = [];
    for (;;) {
      const res = await this.next();
      acks.push(res.ackedSequence);
      rejections.push(...res.rejections);
      if (big(res.ackedSequence) >= big(sequence)) return { acks, rejections };
    }
  }

  async close() {
    this.call.end();
    const status = await this.status;
    assert.equal(status.code, grpc.status.OK,
      `StreamMetrics ended ${status.code} ${status.details}`);
  }
}

// ---------------------------------------------------------------------------------------
// The scenario.

const STEP_2_62_PLUS_1 = '4611686018427387905'; // 2^62 + 1: not a JavaScript number
const STEP_NEG = '-4611686018427387905';
const STEP_INT64_MAX = '9223372036854775807';
const TS_2_53_PLUS_1 = '9007199254740993'; // 2^53 + 1 ms: Number() would round it
const TS_BASE = 1_700_000_000_000;

async function main() {
  const results = {};
  const suffix = hex32().slice(0, 8);

  // --- Experiments and runs -------------------------------------------------------------
  const expName = `node-polyglot-${suffix}`;
  const created = await unary(experiments, 'CreateExperiment', {
    name: expName, tags: [{ key: 'client', value: 'node' }],
  });
  const experimentId = created.experimentId;
  assert.match(experimentId, /^\d+$/);
  const { experiment } = await unary(experiments, 'GetExperiment', { experimentId });
  assert.equal(experiment.name, expName);
  assert.equal(experiment.lifecycleStage, 'LIFECYCLE_STAGE_ACTIVE');
  assert.deepEqual(experiment.tags.map((t) => [t.key, t.value]), [['client', 'node']]);
  assert.equal(typeof experiment.creationTime, 'string', 'int64 arrives as a string');

  const dup = errorDetails(await failure(
    unary(experiments, 'CreateExperiment', { name: expName }), 'CreateExperiment twice'));
  assert.equal(dup.code, grpc.status.ALREADY_EXISTS);
  assert.equal(dup.errorInfo.reason, 'RESOURCE_ALREADY_EXISTS');

  const startTime = String(TS_BASE);
  const { run } = await unary(runs, 'CreateRun', {
    experimentId, runName: 'node-main', startTime, userId: 'node',
    tags: [{ key: 'lang', value: 'javascript' }],
  });
  const runId = run.info.runId;
  assert.match(runId, /^[0-9a-f]{32}$/);
  assert.equal(run.info.status, 'RUN_STATUS_RUNNING');
  assert.equal(run.info.startTime, startTime);
  const { run: other } = await unary(runs, 'CreateRun', { experimentId, runName: 'node-other' });
  const otherRunId = other.info.runId;

  // --- LogBatch of 1000 points, params and tags ------------------------------------------
  const batch = [];
  for (let i = 0; i < 1000; i += 1) {
    batch.push({
      key: 'loss', value: 1 / (i + 1), step: String(i), timestamp: String(TS_BASE + i),
    });
  }
  await unary(runs, 'LogBatch', { runId, metrics: batch }); // 1000: the most one batch takes
  await unary(runs, 'LogBatch', {
    runId, params: [{ key: 'lr', value: '0.001' }], tags: [{ key: 'stage', value: 'train' }],
  });
  await unary(runs, 'LogBatch', { runId: otherRunId, params: [{ key: 'lr', value: '0.1' }] });

  // int64 above 2^53 and NaN / +Inf / -Inf through LogBatch (singular fields).
  const specialBatch = [
    { value: NaN, step: STEP_2_62_PLUS_1, timestamp: TS_2_53_PLUS_1 },
    { value: Infinity, step: STEP_NEG, timestamp: TS_2_53_PLUS_1 },
    { value: -Infinity, step: STEP_INT64_MAX, timestamp: String(TS_BASE) },
    { value: 0.5, step: '9007199254740993', timestamp: TS_2_53_PLUS_1 },
  ];
  await unary(runs, 'LogBatch', {
    runId, metrics: specialBatch.map((p) => ({ key: 'special_batch', ...p })),
  });

  // -0.0 in a singular double: protobufjs writes any value present, so it keeps the sign.
  await unary(runs, 'LogBatch', {
    runId, metrics: [{ key: 'neg_zero_batch', value: -0, step: '1', timestamp: String(TS_BASE) }],
  });
  const negZeroBatch = (await allHistoryPages(runId, 'neg_zero_batch', 0)).points;
  assert.equal(negZeroBatch.length, 1);
  assert.ok(Object.is(negZeroBatch[0].value, -0),
    `-0.0 via LogBatch read back as ${negZeroBatch[0].value}`);

  // --- UpdateRun, GetRun ------------------------------------------------------------------
  const endTime = String(TS_BASE + 5000);
  const updated = await unary(runs, 'UpdateRun', {
    runId, status: 'RUN_STATUS_FINISHED', endTime, runName: 'node-main-renamed',
  });
  assert.equal(updated.runInfo.status, 'RUN_STATUS_FINISHED');
  assert.equal(updated.runInfo.endTime, endTime);
  assert.equal(updated.runInfo.runName, 'node-main-renamed');
  const got = (await unary(runs, 'GetRun', { runId })).run;
  assert.equal(got.info.status, 'RUN_STATUS_FINISHED');
  assert.equal(got.info.endTime, endTime);
  assert.equal(got.info.experimentId, experimentId);
  const params = Object.fromEntries(got.data.params.map((p) => [p.key, p.value]));
  assert.deepEqual(params, { lr: '0.001' });
  const tags = Object.fromEntries(got.data.tags.map((t) => [t.key, t.value]));
  assert.equal(tags.stage, 'train');
  assert.equal(tags.lang, 'javascript');
  assert.equal(tags['mlflow.runName'], 'node-main-renamed');
  const summaries = Object.fromEntries(got.data.metricSummaries.map((s) => [s.key, s]));
  assert.equal(summaries.loss.count, '1000');
  assert.equal(summaries.loss.lastStep, '999');
  assert.equal(summaries.special_batch.count, '4');
  assert.equal(summaries.special_batch.nanCount, '1');
  assert.equal(summaries.special_batch.firstStep, STEP_NEG);
  assert.equal(summaries.special_batch.lastStep, STEP_INT64_MAX);
  assert.equal(summaries.special_batch.min, -Infinity);
  assert.equal(summaries.special_batch.max, Infinity);
  const latest = Object.fromEntries(got.data.metrics.map((m) => [m.key, m]));
  assert.equal(latest.special_batch.step, STEP_INT64_MAX);
  assert.equal(latest.special_batch.value, -Infinity);

  // --- Every history page -----------------------------------------------------------------
  const loss = await allHistoryPages(runId, 'loss', 300);
  assert.deepEqual(loss.pageSizes, [300, 300, 300, 100]);
  loss.points.forEach((p, i) => {
    assert.equal(p.step, String(i));
    assert.equal(p.timestamp, String(TS_BASE + i));
    assert.equal(p.value, 1 / (i + 1));
  });
  const lossDefault = await allHistoryPages(runId, 'loss', 0);
  assert.deepEqual(lossDefault.pageSizes, [1000]);

  const specialSorted = [...specialBatch].sort((a, b) => (big(a.step) < big(b.step) ? -1 : 1));
  const checkSpecial = (points, what) => {
    assert.equal(points.length, specialSorted.length, `${what}: count`);
    points.forEach((p, i) => {
      assert.equal(p.step, specialSorted[i].step, `${what}: step ${i}`);
      assert.equal(p.timestamp, specialSorted[i].timestamp, `${what}: timestamp ${i}`);
      assert.ok(sameDouble(p.value, specialSorted[i].value),
        `${what}: value ${i} is ${p.value}, not ${specialSorted[i].value}`);
    });
  };
  const specialPages = await allHistoryPages(runId, 'special_batch', 1);
  assert.deepEqual(specialPages.pageSizes, [1, 1, 1, 1]);
  checkSpecial(specialPages.points, 'GetMetricHistory special_batch');
  checkSpecial((await streamHistory(runId, 'special_batch', 0)).points,
    'StreamMetricHistory special_batch');

  // --- StreamMetrics: handshake, chunks, acks, rejections, resend after reconnect ---------
  const streamId = `node-${hex32()}`;
  const unknownRunId = hex32();
  const cols = (key, steps, values, timestamps = [], rid = runId) => ({
    runId: rid, key, steps: steps.map(String), timestamps: timestamps.map(String), values,
  });
  const chunk1 = [cols('stream_loss', [0, 1, 2], [0.9, 0.8, 0.7], [TS_BASE, TS_BASE, TS_BASE])];
  const chunk2 = [cols('stream_loss', [3], [0.6], [], unknownRunId)]; // unknown run
  const chunk3 = [cols('bad..key', [3], [0.6])]; // breaks the key rule
  const streamSpecialValues = [NaN, Infinity, -Infinity, -0, 1.5];
  const streamSpecialSteps = [STEP_2_62_PLUS_1, STEP_NEG, STEP_INT64_MAX, '7', '8'];
  const streamSpecialTs = [TS_2_53_PLUS_1, TS_2_53_PLUS_1, TS_BASE, TS_BASE, TS_2_53_PLUS_1];
  const chunk4 = [
    cols('stream_loss', [3, 4], [0.6, 0.5], [TS_BASE, TS_BASE]),
    cols('stream_special', streamSpecialSteps, streamSpecialValues, streamSpecialTs),
  ];
  const chunk5 = [cols('stream_loss', [5, 6], [0.4, 0.3], [TS_BASE, TS_BASE])];

  const first = new MetricStream(streamId);
  const handshake1 = await first.handshake();
  assert.equal(handshake1, '0', 'a new stream id has committed nothing');
  first.send(1, chunk1);
  const ack1 = await first.ackedThrough(1);
  assert.equal(ack1.rejections.length, 0);
  first.send(2, chunk2);
  first.send(3, chunk3);
  first.send(4, chunk4);
  const ack4 = await first.ackedThrough(4);
  const bySeq = Object.fromEntries(ack4.rejections.map((r) => [r.sequence, r]));
  assert.deepEqual(Object.keys(bySeq).sort(), ['2', '3'], 'chunks 2 and 3 are rejected');
  const rejectedUnknown = bySeq['2'];
  assert.equal(rejectedUnknown.statusCode, 'NOT_FOUND');
  assert.equal(CODE_NUMBERS[rejectedUnknown.statusCode], grpc.status.NOT_FOUND);
  assert.equal(CODE_NUMBERS[rejectedUnknown.statusCode], 5);
  assert.equal(rejectedUnknown.reason, 'RESOURCE_DOES_NOT_EXIST');
  assert.ok(rejectedUnknown.message.length > 0);
  const rejectedKey = bySeq['3'];
  assert.equal(CODE_NUMBERS[rejectedKey.statusCode], grpc.status.INVALID_ARGUMENT);
  assert.equal(rejectedKey.reason, 'INVALID_PARAMETER_VALUE');
  assert.match(rejectedKey.message, /series\[0\]\.key/);
  // The connection drops (the client gives up on the call) after chunk 4 was acknowledged.
  first.call.cancel();
  await first.status;

  const second = new MetricStream(streamId);
  const handshake2 = await second.handshake();
  assert.equal(handshake2, '4', 'the handshake reports the committed sequence');
  // Resent: at or below the committed sequence, so not written again. Its points differ
  // from the first chunk 4 (an exact duplicate point would be a no-op anyway), so a write
  // would show.
  second.send(4, [
    cols('stream_loss', [3, 4, 100], [0.6, 0.5, 0.05], [TS_BASE, TS_BASE, TS_BASE]),
    cols('resend_marker', [0], [1]),
  ]);
  const ackResend = await second.ackedThrough(4);
  assert.equal(ackResend.rejections.length, 0);
  second.send(5, chunk5);
  const ack5 = await second.ackedThrough(5);
  assert.equal(ack5.rejections.length, 0);
  await second.close();

  const streamLoss = await allHistoryPages(runId, 'stream_loss', 2);
  assert.deepEqual(streamLoss.points.map((p) => p.step), ['0', '1', '2', '3', '4', '5', '6'],
    'stream_loss holds chunks 1, 4 and 5 once each');
  assert.deepEqual(streamLoss.pageSizes, [2, 2, 2, 1]);
  const marker = await allHistoryPages(runId, 'resend_marker', 0);
  assert.deepEqual(marker.points, [], 'the resent chunk 4 was not written');
  const streamSpecialExpected = streamSpecialSteps
    .map((step, i) => ({
      step, timestamp: String(streamSpecialTs[i]), value: streamSpecialValues[i],
    }))
    .sort((a, b) => (big(a.step) < big(b.step) ? -1 : big(a.step) > big(b.step) ? 1 : 0));
  const checkStreamSpecial = (points, what) => {
    assert.equal(points.length, streamSpecialExpected.length, `${what}: count`);
    points.forEach((p, i) => {
      const want = streamSpecialExpected[i];
      assert.equal(p.step, want.step, `${what}: step ${i}`);
      assert.equal(p.timestamp, want.timestamp, `${what}: timestamp ${i}`);
      assert.ok(sameDouble(p.value, want.value), `${what}: value ${i} is ${p.value}`);
    });
  };
  const streamSpecialPages = await allHistoryPages(runId, 'stream_special', 2);
  // Both reads keep -0.0: the server writes it, and protobufjs decodes every double.
  checkStreamSpecial(streamSpecialPages.points, 'GetMetricHistory stream_special');
  const streamedBack = await streamHistory(runId, 'stream_special', 2);
  assert.equal(streamedBack.messages, 3, 'chunk_size 2 splits 5 points into 3 messages');
  checkStreamSpecial(streamedBack.points, 'StreamMetricHistory stream_special');

  // --- SearchRuns with a filter -----------------------------------------------------------
  const search = async (filter, orderBy = []) => {
    const ids = [];
    let pageToken = '';
    for (;;) {
      const page = await unary(runs, 'SearchRuns', {
        experimentIds: [experimentId], filter, orderBy, maxResults: 1, pageToken,
      });
      ids.push(...page.runs.map((r) => r.info.runId));
      if (!page.nextPageToken) return ids;
      pageToken = page.nextPageToken;
    }
  };
  const byParam = await search("params.lr = '0.001' AND attributes.status = 'FINISHED'");
  assert.deepEqual(byParam, [runId]);
  const byMetric = await search('metrics.loss < 0.5 AND metrics.loss.count = 1000');
  assert.deepEqual(byMetric, [runId]);
  const byOr = await search("params.lr = '0.1' OR params.lr = '0.001'", ['params.lr DESC']);
  assert.deepEqual(byOr, [otherRunId, runId]);
  const badFilter = errorDetails(await failure(
    unary(runs, 'SearchRuns', { experimentIds: [experimentId], filter: 'params.lr = = 1' }),
    'SearchRuns with a malformed filter'));
  assert.equal(badFilter.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(badFilter.errorInfo.reason, 'INVALID_PARAMETER_VALUE');

  // --- Error details ------------------------------------------------------------------------
  const missing = hex32();
  const notFound = errorDetails(await failure(
    unary(runs, 'GetRun', { runId: missing }), 'GetRun of an unknown run'));
  assert.equal(notFound.code, grpc.status.NOT_FOUND);
  assert.equal(notFound.errorInfo.reason, 'RESOURCE_DOES_NOT_EXIST');
  assert.equal(notFound.errorInfo.domain, 'trackd.v1');
  assert.ok(notFound.typeUrls.includes('type.googleapis.com/google.rpc.ErrorInfo'));
  const malformed = errorDetails(await failure(
    unary(runs, 'GetRun', { runId: 'not-a-run-id' }), 'GetRun of a malformed id'));
  assert.equal(malformed.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(malformed.errorInfo.reason, 'INVALID_PARAMETER_VALUE');
  const badKey = errorDetails(await failure(
    unary(runs, 'LogBatch', { runId, metrics: [{ key: 'bad key!', value: 1, step: '1' }] }),
    'LogBatch with a bad key'));
  assert.equal(badKey.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(badKey.errorInfo.reason, 'INVALID_PARAMETER_VALUE');
  assert.ok(badKey.typeUrls.includes('type.googleapis.com/google.rpc.BadRequest'));
  assert.deepEqual(badKey.fieldViolations.map((v) => v.field), ['metrics[0].key']);
  const expNotFound = errorDetails(await failure(
    unary(experiments, 'GetExperiment', { experimentId: '999999999' }),
    'GetExperiment of an unknown id'));
  assert.equal(expNotFound.code, grpc.status.NOT_FOUND);
  assert.equal(expNotFound.errorInfo.reason, 'RESOURCE_DOES_NOT_EXIST');

  Object.assign(results, {
    experiment_id: experimentId,
    run_id: runId,
    other_run_id: otherRunId,
    stream_id: streamId,
    loss_page_sizes: loss.pageSizes,
    loss_count: loss.points.length,
    special_batch: specialPages.points.map((p) => ({
      step: p.step, timestamp: p.timestamp, value: String(p.value),
    })),
    stream_handshakes: [handshake1, handshake2],
    stream_acks: [...ack1.acks, ...ack4.acks, ...ackResend.acks, ...ack5.acks],
    stream_rejections: ack4.rejections.map((r) => ({
      sequence: r.sequence, status_code: CODE_NUMBERS[r.statusCode], code_name: r.statusCode,
      deprecated_code: r.code, reason: r.reason, message: r.message,
    })),
    stream_loss_steps: streamLoss.points.map((p) => p.step),
    stream_special: streamedBack.points.map((p) => ({
      step: p.step, timestamp: p.timestamp, value: Object.is(p.value, -0) ? '-0' : String(p.value),
    })),
    search: { by_param: byParam, by_metric: byMetric, by_or: byOr },
    errors: {
      get_run_unknown: { code: notFound.code, reason: notFound.errorInfo.reason },
      get_run_malformed: { code: malformed.code, reason: malformed.errorInfo.reason },
      log_batch_bad_key: {
        code: badKey.code, reason: badKey.errorInfo.reason,
        fields: badKey.fieldViolations.map((v) => v.field),
      },
      create_experiment_twice: { code: dup.code, reason: dup.errorInfo.reason },
      search_bad_filter: { code: badFilter.code, reason: badFilter.errorInfo.reason },
    },
    versions: {
      node: process.version,
      'grpc-js': require('@grpc/grpc-js/package.json').version,
      'proto-loader': require('@grpc/proto-loader/package.json').version,
      protobufjs: require('protobufjs/package.json').version,
    },
  });
  return results;
}

main()
  .then((results) => {
    process.stdout.write(`${JSON.stringify(results)}\n`);
    experiments.close();
    runs.close();
  })
  .catch((err) => {
    const where = err instanceof assert.AssertionError ? 'check failed' : 'error';
    process.stderr.write(`trackd_client.js: ${where}: ${err.stack || err}\n`);
    if (err.code !== undefined && err.details !== undefined) {
      process.stderr.write(`gRPC status ${err.code}: ${err.details}\n`);
    }
    process.exit(1);
  });
