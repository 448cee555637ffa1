#!/usr/bin/env node
// Minimal fedctx coordinator client built only from the public .proto files:
// health check, federation and round status, and a digest-checked aggregate download.
//
//   node fedctx-client.mjs --target 127.0.0.1:PORT --ca ca.pem --cert org1.pem \
//       --key org1.key --round ROUND [--out aggregate.bin] [--timeout-s 10]
//
// Prints one JSON object on stdout; on any error prints a message on stderr and exits
// non-zero (2: bad usage or unreadable files, 1: RPC, protocol or integrity failure).
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const FEDCTX_PROTO = fileURLToPath(new URL("../../proto/fedctx/v1/fedctx.proto", import.meta.url));
const HEALTH_PROTO = fileURLToPath(new URL("./health.proto", import.meta.url));
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String, // uint64 as decimal strings: converted below with a range check
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true, // sets the virtual field `part` to "header" or "chunk"
};
const USAGE =
  "usage: node fedctx-client.mjs --target HOST:PORT --ca CA.pem --cert CERT.pem " +
  "--key KEY.pem --round ROUND_ID [--out FILE] [--timeout-s SECONDS]";

class UsageError extends Error {}

// grpc-js passes the target host as the TLS ServerName even when it is an IP address
// (certificate checking still uses the IP SAN); Node flags that as DEP0123 on every run.
// Drop only that one warning so stderr stays meaningful.
const emitWarning = process.emitWarning;
process.emitWarning = function filteredWarning(warning, ...rest) {
  const code = typeof rest[0] === "object" && rest[0] !== null ? rest[0].code : rest[1];
  if (code === "DEP0123") return;
  return emitWarning.call(process, warning, ...rest);
};

function fail(message, code) {
  process.stderr.write(`fedctx-client: error: ${message}\n`);
  process.exit(code);
}

function parseCli(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        target: { type: "string" },
        ca: { type: "string" },
        cert: { type: "string" },
        key: { type: "string" },
        round: { type: "string" },
        out: { type: "string" },
        "timeout-s": { type: "string", default: "10" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    throw new UsageError(`${err.message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const missing = ["target", "ca", "cert", "key", "round"].filter((name) => !values[name]);
  if (missing.length) {
    throw new UsageError(`missing ${missing.map((m) => `--${m}`).join(", ")}\n${USAGE}`);
  }
  const timeoutS = Number(values["timeout-s"]);
  if (!Number.isFinite(timeoutS) || timeoutS <= 0) {
    throw new UsageError(`--timeout-s must be a positive number, got ${values["timeout-s"]}`);
  }
  return { ...values, timeoutS };
}

function readPem(label, path) {
  try {
    return readFileSync(path);
  } catch (err) {
    throw new UsageError(`cannot read ${label} file ${path}: ${err.message}`);
  }
}

function toSafeInt(value, field) {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new Error(`${field}=${value} is not a usable length`);
  }
  return n;
}

function rpcError(method, err) {
  const status = err && typeof err.code === "number" ? grpc.status[err.code] : undefined;
  const detail = err && (err.details || err.message) ? err.details || err.message : String(err);
  return new Error(`${method} failed${status ? ` (${status})` : ""}: ${detail}`);
}

function deadline(timeoutS) {
  return new Date(Date.now() + timeoutS * 1000);
}

function unary(client, method, request, timeoutS) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline(timeoutS) }, (err, response) => {
      if (err) reject(rpcError(method, err));
      else resolve(response);
    });
  });
}

// Server stream: the first message carries the header, every following one a chunk.
function downloadAggregate(client, roundId, timeoutS) {
  return new Promise((resolve, reject) => {
    const call = client.DownloadAggregate({ round_id: roundId }, { deadline: deadline(timeoutS) });
    let header = null;
    const chunks = [];
    let settled = false;
    const abort = (error) => {
      if (settled) return;
      settled = true;
      call.cancel();
      reject(error);
    };
    call.on("data", (message) => {
      if (settled) return;
      if (message.part === "header") {
        if (header !== null) abort(new Error("DownloadAggregate sent a second header"));
        else header = message.header;
      } else if (message.part === "chunk") {
        if (header === null) abort(new Error("DownloadAggregate sent a chunk before its header"));
        else chunks.push(message.chunk);
      } else {
        abort(new Error("DownloadAggregate sent a message with neither header nor chunk"));
      }
    });
    call.on("error", (err) => abort(rpcError("DownloadAggregate", err)));
    call.on("end", () => {
      if (settled) return;
      settled = true;
      if (header === null) reject(new Error("DownloadAggregate ended without a header"));
      else resolve({ header, payload: Buffer.concat(chunks) });
    });
  });
}

async function main() {
  const args = parseCli(process.argv.slice(2));
  const ca = readPem("--ca", args.ca);
  const cert = readPem("--cert", args.cert);
  const key = readPem("--key", args.key);

  let fedctx, health;
  try {
    const loaded = grpc.loadPackageDefinition(
      protoLoader.loadSync([FEDCTX_PROTO, HEALTH_PROTO], LOADER_OPTIONS),
    );
    fedctx = loaded.fedctx.v1;
    health = loaded.grpc.health.v1;
  } catch (err) {
    throw new Error(`cannot load ${FEDCTX_PROTO} / ${HEALTH_PROTO}: ${err.message}`);
  }

  const credentials = grpc.credentials.createSsl(ca, key, cert);
  const options = {
    "grpc.max_receive_message_length": 64 * 1024 * 1024,
    "grpc.max_send_message_length": 4 * 1024 * 1024,
  };
  const healthClient = new health.Health(args.target, credentials, options);
  const coordinator = new fedctx.Coordinator(args.target, credentials, options);
  try {
    const check = await unary(healthClient, "Check", { service: "" }, args.timeoutS);
    if (check.status !== "SERVING") {
      throw new Error(`health check of ${args.target} answered ${check.status}, not SERVING`);
    }
    const federation = await unary(coordinator, "GetFederation", {}, args.timeoutS);
    const round = await unary(coordinator, "GetRound", { round_id: args.round }, args.timeoutS);
    const result = {
      health: check.status,
      federation_id: federation.federation_id,
      roster: federation.roster,
      keyholder_id: federation.keyholder_id,
      round: { round_id: round.round_id, state: round.state, contributions: round.contributions },
      aggregate: null,
    };
    if (round.state === "ROUND_STATE_CLOSED") {
      // The download may be much larger than a unary reply: it gets a longer deadline.
      const { header, payload } = await downloadAggregate(coordinator, args.round, args.timeoutS * 6);
      if (header.round_id !== args.round) {
        throw new Error(`aggregate header is for round ${header.round_id}, asked for ${args.round}`);
      }
      const payloadBytes = toSafeInt(header.payload_bytes, "payload_bytes");
      if (payload.length !== payloadBytes) {
        throw new Error(`aggregate arrived incomplete: ${payload.length} of ${payloadBytes} bytes`);
      }
      const digest = createHash("sha256").update(payload).digest();
      const sha256Ok = digest.equals(header.payload_sha256);
      result.aggregate = {
        contributions: header.contributions,
        vector_length: toSafeInt(header.vector_length, "vector_length"),
        num_ciphertexts: header.num_ciphertexts,
        payload_bytes: payloadBytes,
        sha256: digest.toString("hex"),
        sha256_ok: sha256Ok,
      };
      if (!sha256Ok) {
        process.stdout.write(`${JSON.stringify(result)}\n`);
        throw new Error(
          `aggregate digest mismatch: got ${digest.toString("hex")}, header says ` +
            `${Buffer.from(header.payload_sha256).toString("hex")}; nothing written`,
        );
      }
      if (args.out) {
        try {
          writeFileSync(args.out, payload);
        } catch (err) {
          throw new Error(`cannot write --out ${args.out}: ${err.message}`);
        }
      }
    } else if (args.out) {
      throw new Error(`round ${args.round} is ${round.state}, not ROUND_STATE_CLOSED: ` +
        `no aggregate to write to ${args.out}`);
    }
    process.stdout.write(`${JSON.stringify(result)}\n`);
  } finally {
    healthClient.close();
    coordinator.close();
  }
}

main().then(
  () => process.exit(0),
  (err) => fail(err.message, err instanceof UsageError ? 2 : 1),
);
