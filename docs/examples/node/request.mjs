// Publish one request to segmind-queue in the plain form and wait for its result:
// RabbitMQ's RPC convention (the bare request as the body, reply_to and correlation_id as
// properties), nothing but amqplib.
//
//   node request.mjs WORKFLOW [INPUTS_JSON] [REQUEST_ID]
//   AMQP_URL, REQUESTS_QUEUE, REPLY_QUEUE and TIMEOUT_S are optional.
//
// Prints the result as JSON; exits 0 when it arrived (whatever its status), 1 if not.
import amqp from "amqplib";
import { randomUUID } from "node:crypto";

const url = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2F";
const requests = process.env.REQUESTS_QUEUE ?? "segmind.requests";
// A named, durable reply queue: a result waits there even if it outlives this process.
const replyQueue = process.env.REPLY_QUEUE ?? `results.node-${process.pid}`;
const timeoutMs = Number(process.env.TIMEOUT_S ?? 3600) * 1000;
const [workflow = "sketch-maker", inputs = "{}", requestId = randomUUID()] = process.argv.slice(2);

const connection = await amqp.connect(url);
const channel = await connection.createConfirmChannel();
await channel.checkQueue(requests); // the worker declares it: start one first
await channel.assertQueue(replyQueue, { durable: true });

const result = new Promise((resolve) => {
  channel.consume(replyQueue, (message) => {
    const { correlationId, type } = message.properties;
    channel.ack(message);
    if (type !== "segmind.result") return; // not a final result
    if (correlationId === requestId) {
      resolve(JSON.parse(message.content.toString("utf8")));
    } else {
      // This queue is this client's: an earlier run's result. Keep it somewhere real.
      console.error(`a result for another request: ${message.content.toString("utf8")}`);
    }
  });
});

const request = { workflow, inputs: JSON.parse(inputs) };
channel.sendToQueue(requests, Buffer.from(JSON.stringify(request)), {
  contentType: "application/json",
  persistent: true,
  replyTo: replyQueue,
  correlationId: requestId, // the request_id: one request is never paid for twice
  timestamp: Math.floor(Date.now() / 1000),
});
await channel.waitForConfirms(); // RabbitMQ has the request

const timeout = new Promise((resolve) => setTimeout(resolve, timeoutMs, null));
const answer = await Promise.race([result, timeout]);
console.log(JSON.stringify(answer));
await channel.close();
await connection.close();
process.exit(answer === null ? 1 : 0);
