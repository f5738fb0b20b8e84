// A downstream consumer of apptsync's topics in Node.js: kafkajs reads the messages (gzip is built
// in; zstd would need a codec plugin, which is why apptsync's downstream topics are never zstd) and
// protobufjs decodes them from the .proto files in protos/ (no generated code).
//
//   node consume.js <bootstrap servers> <protos dir> <timeout ms> <topic>=<message type>=<count> ...
//
// e.g. `node consume.js 127.0.0.1:9092 ../../../protos 30000 \
//         apptsync.appointment-changes=apptsync.v1.AppointmentChange=10 apptsync.job-events=apptsync.v1.JobFinished=1`
//
// Reads every topic from its beginning until it has `count` messages of each, and prints one JSON line
// per message to stdout: {"topic", "partition", "key", "value"} with the value decoded (64-bit integers
// and enums as strings). Exit status 0 when every count was reached, 2 on timeout, 1 on any error.
"use strict";

const path = require("path");
const protobuf = require("protobufjs");
const { Kafka, logLevel } = require("kafkajs");

function parseArguments(argv) {
  if (argv.length < 4) {
    throw new Error("usage: consume.js <bootstrap> <protos dir> <timeout ms> <topic>=<type>=<count> ...");
  }
  const [bootstrap, protosDir, timeoutText, ...specs] = argv;
  const wanted = specs.map((spec) => {
    const [topic, type, count] = spec.split("=");
    return { topic, type, count: Number(count) };
  });
  return { brokers: bootstrap.split(","), protosDir, timeoutMs: Number(timeoutText), wanted };
}

function loadTypes(protosDir, typeNames) {
  const root = new protobuf.Root();
  // Imports such as "apptsync/v1/pages.proto" resolve against the protos directory; the well-known
  // google/protobuf types ship with protobufjs.
  root.resolvePath = (_origin, target) =>
    target.startsWith("google/protobuf/") ? target : path.join(protosDir, target);
  root.loadSync(["apptsync/v1/change_events.proto", "apptsync/v1/imports.proto"], { keepCase: true });
  return Object.fromEntries(typeNames.map((name) => [name, root.lookupType(name)]));
}

async function main() {
  const { brokers, protosDir, timeoutMs, wanted } = parseArguments(process.argv.slice(2));
  const types = loadTypes(protosDir, wanted.map((w) => w.type));
  const byTopic = Object.fromEntries(wanted.map((w) => [w.topic, { ...w, seen: 0 }]));
  const kafka = new Kafka({
    clientId: "apptsync-kafkajs-consumer",
    brokers,
    logLevel: logLevel.ERROR,
    // kafkajs logs to stdout by default; stdout carries the messages only.
    logCreator: () => ({ namespace, label, log }) => process.stderr.write(`${label} ${namespace} ${log.message}\n`),
  });
  const consumer = kafka.consumer({ groupId: `apptsync-kafkajs-${process.pid}-${Date.now()}` });
  let finish;
  const finished = new Promise((resolve) => {
    finish = resolve;
  });
  const timer = setTimeout(() => finish(2), timeoutMs);
  await consumer.connect();
  await consumer.subscribe({ topics: wanted.map((w) => w.topic), fromBeginning: true });
  await consumer.run({
    eachMessage: async ({ topic, partition, message }) => {
      const want = byTopic[topic];
      const decoded = types[want.type].decode(message.value);
      const value = types[want.type].toObject(decoded, { longs: String, enums: String, defaults: false });
      process.stdout.write(
        JSON.stringify({ topic, partition, key: message.key ? message.key.toString("utf8") : null, value }) + "\n",
      );
      want.seen += 1;
      if (Object.values(byTopic).every((w) => w.seen >= w.count)) {
        finish(0);
      }
    },
  });
  const status = await finished;
  clearTimeout(timer);
  await consumer.disconnect();
  if (status !== 0) {
    const counts = Object.values(byTopic).map((w) => `${w.topic}: ${w.seen}/${w.count}`).join(", ");
    process.stderr.write(`timed out after ${timeoutMs} ms (${counts})\n`);
  }
  process.exit(status);
}

main().catch((error) => {
  process.stderr.write(`consumer failed: ${error && error.stack ? error.stack : error}\n`);
  process.exit(1);
});
