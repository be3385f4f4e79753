#!/usr/bin/env node
// Settle's Stripe-compatible API driven by Stripe's official Node.js SDK (stripe-node), which
// takes only a host, a port and a protocol: it is pointed at the listener given by
// `settle serve --stripe-listen`, where the API is served at the root (`/v1/...`).
//
// Environment:
//   SETTLE_STRIPE_HOST, SETTLE_STRIPE_PORT  that listener
//   SETTLE_STRIPE_KEY                       a merchant API key (sk_test_...)
//   NODE_PATH                               where `stripe` is installed
//
// Exit code 0 when every check passes. Every wait is bounded; everything stays on loopback.
// `crates/settle/tests/stripe_sdk.rs` runs this against a fresh `settle serve` on each engine.

'use strict';

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const http = require('node:http');
const Stripe = require('stripe');

const HOST = process.env.SETTLE_STRIPE_HOST || '127.0.0.1';
const PORT = Number(process.env.SETTLE_STRIPE_PORT || 0);
const KEY = process.env.SETTLE_STRIPE_KEY || '';
const WAIT_MS = 30000;
const SUITE_MS = 120000;

const stripe = new Stripe(KEY, {
  host: HOST,
  port: PORT,
  protocol: 'http',
  maxNetworkRetries: 0,
  timeout: 60000,
  telemetry: false,
});

const run = crypto.randomBytes(4).toString('hex');

async function poll(find) {
  const until = Date.now() + WAIT_MS;
  for (;;) {
    const found = await find();
    if (found || Date.now() > until) return found;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function rejects(promise, type) {
  try {
    await promise;
  } catch (e) {
    assert.equal(e.type, type, `${e.type}: ${e.message}`);
    return e;
  }
  assert.fail(`expected a ${type}`);
}

// A loopback receiver that answers 200 and keeps (raw body, Stripe-Signature) of each POST.
function receiver() {
  const seen = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      seen.push([Buffer.concat(chunks), req.headers['stripe-signature']]);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, seen, url: `http://127.0.0.1:${server.address().port}/hooks` }));
  });
}

const tests = {
  async 'automatic capture, with the charge expanded'() {
    const pi = await stripe.paymentIntents.create({
      amount: 2000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true, metadata: { order: run },
    });
    assert.match(pi.id, /^pi_/);
    assert.equal(pi.status, 'succeeded');
    assert.equal(pi.amount_received, 2000);
    const again = await stripe.paymentIntents.retrieve(pi.id, { expand: ['latest_charge'] });
    assert.equal(again.latest_charge.object, 'charge');
    assert.equal(again.latest_charge.payment_method_details.card.last4, '4242');
    assert.equal(again.metadata.order, run);
  },

  async 'manual capture of part of the authorization'() {
    const pi = await stripe.paymentIntents.create({
      amount: 3000, currency: 'eur', capture_method: 'manual', payment_method: 'pm_card_mastercard', confirm: true,
    });
    assert.equal(pi.status, 'requires_capture');
    assert.equal(pi.amount_capturable, 3000);
    const captured = await stripe.paymentIntents.capture(pi.id, { amount_to_capture: 1200 });
    assert.equal(captured.status, 'succeeded');
    assert.equal(captured.amount_received, 1200);
  },

  async 'a decline is a StripeCardError'() {
    const e = await rejects(
      stripe.paymentIntents.create({
        amount: 1000, currency: 'usd', payment_method: 'pm_card_chargeDeclinedInsufficientFunds', confirm: true,
      }),
      'StripeCardError',
    );
    assert.equal(e.statusCode, 402);
    assert.equal(e.code, 'card_declined');
    assert.equal(e.decline_code, 'insufficient_funds');
    assert.equal(e.raw.payment_intent.status, 'requires_payment_method');
  },

  async 'partial and full refunds; an over-refund is refused'() {
    const pi = await stripe.paymentIntents.create({
      amount: 5000, currency: 'usd', payment_method: 'pm_card_visa', confirm: true,
    });
    const part = await stripe.refunds.create({ payment_intent: pi.id, amount: 1500 });
    assert.equal(part.status, 'succeeded');
    const rest = await stripe.refunds.create({ charge: pi.latest_charge });
    assert.equal(rest.amount, 3500);
    const e = await rejects(stripe.refunds.create({ payment_intent: pi.id, amount: 1 }), 'StripeInvalidRequestError');
    assert.equal(e.statusCode, 400);
    const charge = await stripe.charges.retrieve(pi.latest_charge);
    assert.equal(charge.refunded, true);
    assert.equal(charge.amount_refunded, 5000);
  },

  async 'auto-pagination over several pages'() {
    const customer = await stripe.customers.create({ email: `node-${run}@example.test`, name: 'Node' });
    for (let i = 0; i < 5; i += 1) {
      await stripe.paymentIntents.create({ amount: 100 + i, currency: 'usd', customer: customer.id });
    }
    const seen = [];
    for await (const pi of stripe.paymentIntents.list({ customer: customer.id, limit: 2 })) {
      seen.push(pi.amount);
    }
    assert.deepEqual(seen, [104, 103, 102, 101, 100]);
    const deleted = await stripe.customers.del(customer.id);
    assert.equal(deleted.deleted, true);
  },

  async 'an idempotency key replays, and refuses other parameters'() {
    const idempotencyKey = `node-${run}`;
    const first = await stripe.paymentIntents.create({ amount: 700, currency: 'usd' }, { idempotencyKey });
    const second = await stripe.paymentIntents.create({ amount: 700, currency: 'usd' }, { idempotencyKey });
    assert.equal(second.id, first.id);
    await rejects(
      stripe.paymentIntents.create({ amount: 701, currency: 'usd' }, { idempotencyKey }),
      'StripeIdempotencyError',
    );
  },

  async 'unknown parameters are refused, naming them'() {
    const e = await rejects(
      stripe.paymentIntents.create({ amount: 100, currency: 'usd', transfer_data: { destination: 'acct_1' } }),
      'StripeInvalidRequestError',
    );
    assert.equal(e.param, 'transfer_data');
  },

  async 'a webhook endpoint gets events that stripe.webhooks.constructEvent verifies'() {
    const hooks = await receiver();
    try {
      const ep = await stripe.webhookEndpoints.create({ url: hooks.url, enabled_events: ['payment_intent.succeeded'] });
      assert.match(ep.secret, /^whsec_/);
      const pi = await stripe.paymentIntents.create({
        amount: 2600, currency: 'usd', payment_method: 'pm_card_visa', confirm: true,
      });
      const event = await poll(async () => {
        for (const [body, signature] of hooks.seen) {
          const e = stripe.webhooks.constructEvent(body, signature, ep.secret);
          if (e.data.object.id === pi.id) return e;
        }
        return null;
      });
      assert.ok(event, `a verified payment_intent.succeeded for ${pi.id}`);
      assert.equal(event.type, 'payment_intent.succeeded');
      assert.throws(() => stripe.webhooks.constructEvent(hooks.seen[0][0], hooks.seen[0][1], 'whsec_wrong'));
      await stripe.webhookEndpoints.del(ep.id);
    } finally {
      hooks.server.close();
    }
  },
};

async function main() {
  if (!PORT || !KEY) throw new Error('SETTLE_STRIPE_PORT and SETTLE_STRIPE_KEY must be set');
  setTimeout(() => {
    console.error(`the suite did not finish within ${SUITE_MS} ms`);
    process.exit(2);
  }, SUITE_MS).unref();
  let failed = 0;
  for (const [name, test] of Object.entries(tests)) {
    try {
      await test();
      console.error(`ok   ${name}`);
    } catch (e) {
      failed += 1;
      console.error(`FAIL ${name}\n${e && e.stack ? e.stack : e}`);
    }
  }
  console.error(`${Object.keys(tests).length - failed} passed, ${failed} failed (stripe-node ${Stripe.PACKAGE_VERSION || ''})`);
  process.exit(failed ? 1 : 0);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
