#!/usr/bin/env python3
"""Settle's Stripe-compatible API (`/stripe/v1`) driven by Stripe's official Python SDK.

Environment:
  SETTLE_STRIPE_BASE  the API base the SDK is pointed at, e.g. http://127.0.0.1:8080/stripe
                      (the SDK appends /v1/...)
  SETTLE_STRIPE_KEY   a merchant API key (sk_test_...)

Run: python3 suite.py  (exit code 0 when every test passes). Only the standard library and
the `stripe` package are used; every wait is bounded. `crates/settle/tests/stripe_sdk.rs` runs
this against a fresh `settle serve` on SQLite and on PostgreSQL.
"""

import base64
import datetime
import http.client
import http.server
import json
import os
import socket
import sys
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request
import uuid

import stripe

BASE = os.environ.get("SETTLE_STRIPE_BASE", "").rstrip("/")
KEY = os.environ.get("SETTLE_STRIPE_KEY", "")

# Longest wait for one HTTP request made by the SDK (Settle's own request timeout is 30 s).
REQUEST_TIMEOUT_SECONDS = 60
# Longest wait for an asynchronous effect (an event recorded, a webhook delivered).
EVENT_WAIT_SECONDS = 15
WEBHOOK_WAIT_SECONDS = 30
POLL_INTERVAL_SECONDS = 0.2

# Every request of this suite goes to loopback: never through an HTTP proxy from the
# environment (requests and urllib both honour NO_PROXY).
for _var in ("NO_PROXY", "no_proxy"):
    _hosts = [h for h in os.environ.get(_var, "").split(",") if h]
    os.environ[_var] = ",".join(_hosts + ["127.0.0.1", "localhost"])

# urllib without any proxy, for the requests this suite makes without the SDK.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def configure():
    """Points the SDK's global (classic) API at Settle."""
    if not BASE or not KEY:
        raise RuntimeError("SETTLE_STRIPE_BASE and SETTLE_STRIPE_KEY must be set")
    stripe.api_key = KEY
    stripe.api_base = BASE
    # v16 retries twice by default (connection errors, 409, 5xx): that would hide server
    # errors, so only the retry test turns retries on.
    stripe.max_network_retries = 0
    # Telemetry would write ~/.config/stripe/telemetry_id and add a header per request.
    stripe.enable_telemetry = False
    # The requests-based client (requests is a dependency of stripe) with a bounded timeout.
    # It is also the client whose connection errors the SDK retries: the urllib fallback
    # marks them not retryable.
    stripe.default_http_client = stripe.RequestsClient(timeout=REQUEST_TIMEOUT_SECONDS)


def setUpModule():
    configure()


def tag():
    return uuid.uuid4().hex


def card_params(number="4242424242424242"):
    return {
        "number": number,
        "exp_month": 12,
        "exp_year": datetime.date.today().year + 2,
        "cvc": "123",
    }


def poll(probe, timeout, interval=POLL_INTERVAL_SECONDS):
    """Calls probe() until it returns something truthy or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def meta(obj, key):
    """obj.metadata[key], or None (StripeObject is not a dict: no .get)."""
    metadata = obj["metadata"] if "metadata" in obj else None
    return metadata[key] if metadata is not None and key in metadata else None


def describe(e):
    """An SDK error with what Settle answered (status and body; never the key)."""
    return "%s: http_status=%r code=%r param=%r body=%s" % (
        type(e).__name__,
        getattr(e, "http_status", None),
        getattr(e, "code", None),
        getattr(e, "param", None),
        getattr(e, "http_body", None),
    )


def paid_intent(amount=2000, **params):
    return stripe.PaymentIntent.create(
        amount=amount, currency="usd", payment_method="pm_card_visa", confirm=True, **params
    )


class SettleTestCase(unittest.TestCase):
    """Adds Settle's answer (status, body) to any SDK error a test did not expect."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, method in list(vars(cls).items()):
            if name.startswith("test") and callable(method):
                setattr(cls, name, cls._with_error_details(method))

    @staticmethod
    def _with_error_details(method):
        def wrapper(self):
            try:
                return method(self)
            except stripe.StripeError as e:
                if hasattr(e, "add_note"):
                    e.add_note(describe(e))
                raise

        wrapper.__name__ = method.__name__
        wrapper.__doc__ = method.__doc__
        return wrapper

    def assert_status(self, e, status):
        self.assertEqual(e.http_status, status, describe(e))


# --------------------------------------------------------------------------- proxy


_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class DropFirstCreateProxy:
    """A loopback HTTP proxy in front of Settle that passes everything through, except that
    the FIRST `POST <base path>/v1/payment_intents` is forwarded, Settle's whole answer is
    read, and then the client's connection is closed without a byte of it: the client sees a
    connection error after the server has already created the payment.

    Records the Idempotency-Key of every such POST (`creates`) and the withheld answer
    (`withheld`: status, body bytes)."""

    def __init__(self, upstream_base):
        upstream = urllib.parse.urlsplit(upstream_base)
        self.upstream_host = upstream.hostname
        self.upstream_port = upstream.port or 80
        self.drop_path = upstream.path.rstrip("/") + "/v1/payment_intents"
        self.lock = threading.Lock()
        self.creates = []
        self.withheld = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # quiet: headers carry the API key
                pass

            def relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                }
                upstream = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=REQUEST_TIMEOUT_SECONDS
                )
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    status, reason = answer.status, answer.reason
                    answer_headers = answer.getheaders()
                    data = answer.read()
                except OSError as e:
                    self.close_connection = True
                    self.send_error(502, "upstream: %s" % type(e).__name__)
                    return
                finally:
                    upstream.close()

                if (
                    self.command == "POST"
                    and urllib.parse.urlsplit(self.path).path == proxy.drop_path
                ):
                    with proxy.lock:
                        proxy.creates.append(self.headers.get("Idempotency-Key"))
                        drop = proxy.withheld is None
                        if drop:
                            proxy.withheld = (status, data)
                    if drop:
                        # Settle has answered; the client gets nothing but a closed socket.
                        self.close_connection = True
                        try:
                            self.connection.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        return

                self.send_response(status, reason)
                for k, v in answer_headers:
                    if k.lower() not in _HOP_BY_HOP and k.lower() not in ("date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

            do_GET = relay
            do_POST = relay
            do_DELETE = relay

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base(self):
        """The API base to give the SDK: the upstream's path, on the proxy's port."""
        port = self.server.server_address[1]
        return "http://127.0.0.1:%d%s" % (port, self.drop_path[: -len("/v1/payment_intents")])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- webhook receiver


class WebhookReceiver:
    """A loopback HTTP server that answers 200 to every POST and keeps
    (raw body bytes, Stripe-Signature header, all headers) of each."""

    def __init__(self):
        self.lock = threading.Lock()
        self.deliveries = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def read_body(self):
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def do_POST(self):
                body = self.read_body()
                with receiver.lock:
                    receiver.deliveries.append(
                        (body, self.headers.get("Stripe-Signature"), dict(self.headers.items()))
                    )
                answer = b"{}"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self):
        return "http://127.0.0.1:%d/hooks" % self.server.server_address[1]

    def received(self):
        with self.lock:
            return list(self.deliveries)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------- tests


class PaymentIntentTests(SettleTestCase):
    def test_automatic_capture_succeeds_with_an_expandable_charge(self):
        pi = paid_intent(2000)
        self.assertTrue(pi.id.startswith("pi_"), pi.id)
        self.assertEqual(pi.object, "payment_intent")
        self.assertEqual(pi.status, "succeeded")
        self.assertEqual(pi.amount, 2000)
        self.assertEqual(pi.currency, "usd")
        self.assertEqual(pi.amount_received, 2000)
        self.assertIsInstance(pi.latest_charge, str)
        self.assertTrue(pi.latest_charge.startswith("ch_"), pi.latest_charge)

        again = stripe.PaymentIntent.retrieve(pi.id, expand=["latest_charge"])
        self.assertEqual(again.id, pi.id)
        self.assertEqual(again.status, "succeeded")
        charge = again.latest_charge
        self.assertNotIsInstance(charge, str, "expand=[latest_charge] returns the object")
        self.assertEqual(charge.object, "charge")
        self.assertEqual(charge.id, pi.latest_charge)
        self.assertTrue(charge.captured)
        self.assertEqual(charge.amount, 2000)
        self.assertEqual(charge.payment_intent, pi.id)
        self.assertEqual(charge.payment_method_details.card.last4, "4242")
        self.assertEqual(charge.payment_method_details.card.brand, "visa")

        direct = stripe.Charge.retrieve(pi.latest_charge)
        self.assertEqual(direct.id, pi.latest_charge)
        self.assertEqual(direct.object, "charge")
        self.assertTrue(direct.captured)

    def test_manual_capture_of_part_of_the_amount(self):
        pi = paid_intent(5000, capture_method="manual")
        self.assertEqual(pi.status, "requires_capture")
        self.assertEqual(pi.amount_capturable, 5000)
        self.assertEqual(pi.amount_received, 0)

        captured = stripe.PaymentIntent.capture(pi.id, amount_to_capture=3000)
        self.assertEqual(captured.id, pi.id)
        self.assertEqual(captured.status, "succeeded")
        self.assertEqual(captured.amount_received, 3000)
        self.assertEqual(captured.amount_capturable, 0)

    def test_create_without_payment_method_then_modify_then_confirm(self):
        pi = stripe.PaymentIntent.create(amount=1000, currency="usd")
        self.assertEqual(pi.status, "requires_payment_method")

        modified = stripe.PaymentIntent.modify(
            pi.id, amount=1500, metadata={"order": "42"}, description="x"
        )
        self.assertEqual(modified.id, pi.id)
        self.assertEqual(modified.amount, 1500)
        self.assertEqual(modified.metadata["order"], "42")
        self.assertEqual(modified.description, "x")

        confirmed = stripe.PaymentIntent.confirm(pi.id, payment_method="pm_card_visa")
        self.assertEqual(confirmed.status, "succeeded")
        self.assertEqual(confirmed.amount_received, 1500)
        self.assertEqual(confirmed.metadata["order"], "42")
        self.assertEqual(stripe.PaymentIntent.retrieve(pi.id).metadata["order"], "42")

    def test_create_with_payment_method_waits_for_confirmation(self):
        pi = stripe.PaymentIntent.create(amount=1200, currency="usd", payment_method="pm_card_visa")
        self.assertEqual(pi.status, "requires_confirmation")
        confirmed = stripe.PaymentIntent.confirm(pi.id)
        self.assertEqual(confirmed.status, "succeeded")
        self.assertEqual(confirmed.amount_received, 1200)

    def test_cancel_an_uncaptured_intent(self):
        pi = paid_intent(2500, capture_method="manual")
        self.assertEqual(pi.status, "requires_capture")
        canceled = stripe.PaymentIntent.cancel(pi.id, cancellation_reason="requested_by_customer")
        self.assertEqual(canceled.id, pi.id)
        self.assertEqual(canceled.status, "canceled")
        self.assertEqual(canceled.cancellation_reason, "requested_by_customer")
        self.assertEqual(stripe.PaymentIntent.retrieve(pi.id).status, "canceled")


class DeclineTests(SettleTestCase):
    def decline(self, payment_method):
        with self.assertRaises(stripe.CardError) as caught:
            stripe.PaymentIntent.create(
                amount=2000, currency="usd", payment_method=payment_method, confirm=True
            )
        e = caught.exception
        self.assert_status(e, 402)
        self.assertIsNotNone(e.error, describe(e))
        self.assertEqual(e.error.type, "card_error", describe(e))
        return e

    def test_generic_decline_is_a_card_error_and_the_intent_can_be_paid_again(self):
        e = self.decline("pm_card_chargeDeclined")
        self.assertEqual(e.code, "card_declined", describe(e))
        self.assertEqual(e.error.decline_code, "generic_decline", describe(e))
        intent = e.error.payment_intent
        self.assertIsNotNone(intent, "the error carries the payment intent: " + describe(e))
        self.assertEqual(intent["status"], "requires_payment_method", describe(e))
        pi_id = intent["id"]
        self.assertTrue(pi_id.startswith("pi_"), pi_id)

        stored = stripe.PaymentIntent.retrieve(pi_id)
        self.assertEqual(stored.status, "requires_payment_method")
        self.assertIsNotNone(stored.last_payment_error)
        self.assertEqual(stored.last_payment_error["code"], "card_declined")

        paid = stripe.PaymentIntent.confirm(pi_id, payment_method="pm_card_visa")
        self.assertEqual(paid.status, "succeeded")
        self.assertEqual(paid.amount_received, 2000)

    def test_insufficient_funds_decline(self):
        e = self.decline("pm_card_chargeDeclinedInsufficientFunds")
        self.assertEqual(e.code, "card_declined", describe(e))
        self.assertEqual(e.error.decline_code, "insufficient_funds", describe(e))
        self.assertEqual(e.error.payment_intent["status"], "requires_payment_method")

    def test_processing_error(self):
        e = self.decline("pm_card_visa_chargeDeclinedProcessingError")
        self.assertEqual(e.code, "processing_error", describe(e))
        self.assertEqual(e.error.payment_intent["status"], "requires_payment_method")


class RefundTests(SettleTestCase):
    def test_partial_then_remaining_refund_then_nothing_left(self):
        pi = paid_intent(3000)
        self.assertEqual(pi.status, "succeeded")
        charge_id = pi.latest_charge

        first = stripe.Refund.create(payment_intent=pi.id, amount=1000)
        self.assertTrue(first.id.startswith("re_"), first.id)
        self.assertEqual(first.object, "refund")
        self.assertEqual(first.status, "succeeded")
        self.assertEqual(first.amount, 1000)
        self.assertEqual(first.currency, "usd")
        self.assertEqual(first.payment_intent, pi.id)
        self.assertEqual(first.charge, charge_id)

        rest = stripe.Refund.create(charge=charge_id)
        self.assertEqual(rest.status, "succeeded")
        self.assertEqual(rest.amount, 2000)

        with self.assertRaises(stripe.InvalidRequestError) as caught:
            stripe.Refund.create(payment_intent=pi.id, amount=1)
        self.assert_status(caught.exception, 400)

        after = stripe.PaymentIntent.retrieve(pi.id, expand=["latest_charge"])
        self.assertEqual(after.status, "succeeded")
        self.assertEqual(after.latest_charge.amount_refunded, 3000)
        self.assertTrue(after.latest_charge.refunded)

        listed = stripe.Refund.list(payment_intent=pi.id)
        self.assertEqual(listed.object, "list")
        self.assertEqual(sorted(r.id for r in listed.data), sorted([first.id, rest.id]))

        fetched = stripe.Refund.retrieve(first.id)
        self.assertEqual(fetched.id, first.id)
        self.assertEqual(fetched.amount, 1000)


class PaginationTests(SettleTestCase):
    def test_payment_intents_of_a_customer_page_newest_first(self):
        label = tag()
        customer = stripe.Customer.create(email="paging-%s@example.com" % label)
        created = []
        for i in range(25):
            pi = stripe.PaymentIntent.create(
                amount=100 + i, currency="usd", customer=customer.id, metadata={"tag": label}
            )
            self.assertEqual(pi.customer, customer.id)
            created.append(pi.id)
            time.sleep(0.002)  # ids are time-ordered to the millisecond

        first = stripe.PaymentIntent.list(customer=customer.id, limit=10)
        self.assertEqual(first.object, "list")
        self.assertEqual(len(first.data), 10)
        self.assertTrue(first.has_more)

        seen = []
        for pi in first.auto_paging_iter():
            seen.append(pi.id)
            self.assertEqual(pi.metadata["tag"], label)
            self.assertLessEqual(len(seen), 25, "the iteration yields more than was created")
        self.assertEqual(len(seen), len(set(seen)), "no intent twice")
        self.assertEqual(seen, list(reversed(created)), "exactly the 25, newest first")

    def test_charges_of_a_customer_page_one_at_a_time(self):
        label = tag()
        # Metadata keys that are all digits stay keys (the SDK sends `metadata[0]=a`).
        customer = stripe.Customer.create(
            email="charges-%s@example.com" % label, metadata={"0": "a", "2024": "x"}
        )
        self.assertEqual(customer.metadata["0"], "a")
        self.assertEqual(customer.metadata["2024"], "x")
        charged = []
        for i in range(7):
            if i % 3 == 0:
                pi = paid_intent(amount=300 + i, customer=customer.id)
                charged.append(pi.id.replace("pi_", "ch_", 1))
            else:
                # No charge: never confirmed.
                stripe.PaymentIntent.create(amount=300 + i, currency="usd", customer=customer.id)

        first = stripe.Charge.list(customer=customer.id, limit=1)
        self.assertEqual(len(first.data), 1, "a page is never empty while charges remain")
        self.assertTrue(first.has_more)
        seen = []
        for charge in first.auto_paging_iter():
            seen.append(charge.id)
            self.assertLessEqual(len(seen), len(charged), "the iteration yields more than was charged")
        self.assertEqual(seen, list(reversed(charged)), "exactly the charges, newest first")

    def test_customers_page_two_at_a_time(self):
        label = tag()
        fresh = []
        for i in range(3):
            fresh.append(stripe.Customer.create(email="list-%d-%s@example.com" % (i, label)).id)
            time.sleep(0.002)

        first = stripe.Customer.list(limit=2)
        self.assertEqual(len(first.data), 2)
        self.assertTrue(first.has_more)

        seen = []
        for c in first.auto_paging_iter():
            seen.append(c.id)
            if len(seen) >= 1000:  # bounded: this suite makes far fewer
                break
        self.assertEqual(len(seen), len(set(seen)), "no customer twice")
        self.assertEqual(seen[:3], list(reversed(fresh)), "newest first")


class IdempotencyTests(SettleTestCase):
    def test_sdk_retry_after_a_dropped_answer_creates_one_intent(self):
        label = tag()
        saved = (stripe.api_base, stripe.max_network_retries)
        with DropFirstCreateProxy(BASE) as proxy:
            stripe.api_base = proxy.base
            stripe.max_network_retries = 2
            try:
                pi = stripe.PaymentIntent.create(
                    amount=1700,
                    currency="usd",
                    payment_method="pm_card_visa",
                    confirm=True,
                    metadata={"retry_tag": label},
                )
            finally:
                stripe.api_base, stripe.max_network_retries = saved
            creates, withheld = list(proxy.creates), proxy.withheld

        self.assertEqual(pi.status, "succeeded")
        self.assertEqual(len(creates), 2, "the SDK sent the create again after the dropped answer")
        self.assertTrue(creates[0], "the SDK sends an Idempotency-Key on every POST")
        self.assertEqual(creates[0], creates[1], "the retry carries the same Idempotency-Key")
        status, body = withheld
        self.assertEqual(status, 200, body)
        self.assertEqual(
            json.loads(body)["id"], pi.id, "the retry answers the intent first created"
        )

        recent = stripe.PaymentIntent.list(limit=100)
        tagged = [p.id for p in recent.data if meta(p, "retry_tag") == label]
        self.assertEqual(tagged, [pi.id], "exactly one intent for the retried create")

    def test_same_key_replays_and_a_different_request_is_refused(self):
        key = "k-%s" % tag()
        params = dict(amount=1300, currency="usd", metadata={"idem": key})
        a = stripe.PaymentIntent.create(idempotency_key=key, **params)
        b = stripe.PaymentIntent.create(idempotency_key=key, **params)
        self.assertEqual(a.id, b.id)

        with self.assertRaises(stripe.IdempotencyError) as caught:
            stripe.PaymentIntent.create(
                idempotency_key=key, amount=1301, currency="usd", metadata={"idem": key}
            )
        self.assert_status(caught.exception, 400)


class CustomerTests(SettleTestCase):
    def test_create_retrieve_modify_list_delete(self):
        label = tag()
        email = "ann-%s@example.com" % label
        c = stripe.Customer.create(email=email, name="Ann", metadata={"tag": label})
        self.assertTrue(c.id.startswith("cus_"), c.id)
        self.assertEqual(c.object, "customer")
        self.assertEqual(c.email, email)
        self.assertEqual(c.name, "Ann")
        self.assertEqual(c.metadata["tag"], label)

        got = stripe.Customer.retrieve(c.id)
        self.assertEqual(got.id, c.id)
        self.assertEqual(got.email, email)

        renamed = stripe.Customer.modify(c.id, name="Ann B")
        self.assertEqual(renamed.name, "Ann B")
        self.assertEqual(stripe.Customer.retrieve(c.id).name, "Ann B")

        listed = stripe.Customer.list(limit=100)
        self.assertIn(c.id, [x.id for x in listed.data])

        deleted = stripe.Customer.delete(c.id)
        self.assertEqual(deleted.id, c.id)
        self.assertTrue(deleted.deleted)

        with self.assertRaises(stripe.InvalidRequestError) as caught:
            stripe.Customer.retrieve(c.id)
        self.assert_status(caught.exception, 404)


class PaymentMethodTests(SettleTestCase):
    def test_create_attach_list_detach(self):
        pm = stripe.PaymentMethod.create(type="card", card=card_params())
        self.assertTrue(pm.id.startswith("pm_"), pm.id)
        self.assertEqual(pm.object, "payment_method")
        self.assertEqual(pm.type, "card")
        self.assertEqual(pm.card.last4, "4242")
        self.assertEqual(pm.card.brand, "visa")
        self.assertEqual(pm.card.exp_month, 12)

        customer = stripe.Customer.create(email="pm-%s@example.com" % tag())
        attached = stripe.PaymentMethod.attach(pm.id, customer=customer.id)
        self.assertEqual(attached.id, pm.id)
        self.assertEqual(attached.customer, customer.id)

        listed = stripe.PaymentMethod.list(customer=customer.id, type="card")
        self.assertIn(pm.id, [x.id for x in listed.data])
        via_customer = stripe.Customer.list_payment_methods(customer.id)
        self.assertIn(pm.id, [x.id for x in via_customer.data])

        detached = stripe.PaymentMethod.detach(pm.id)
        self.assertEqual(detached.id, pm.id)
        self.assertIsNone(detached.customer)
        listed = stripe.PaymentMethod.list(customer=customer.id, type="card")
        self.assertNotIn(pm.id, [x.id for x in listed.data])

    def test_invalid_card_number_names_the_param(self):
        with self.assertRaises((stripe.CardError, stripe.InvalidRequestError)) as caught:
            stripe.PaymentMethod.create(type="card", card=card_params("4242424242424241"))
        e = caught.exception
        self.assertIn(e.http_status, (400, 402), describe(e))
        self.assertEqual(e.param, "card[number]", describe(e))


class ValidationTests(SettleTestCase):
    def test_an_unsupported_parameter_that_moves_money_is_refused(self):
        label = tag()
        with self.assertRaises(stripe.InvalidRequestError) as caught:
            stripe.PaymentIntent.create(
                amount=1000,
                currency="usd",
                transfer_data={"destination": "acct_x"},
                metadata={"tag": label},
            )
        e = caught.exception
        self.assert_status(e, 400)
        self.assertIn("transfer_data", e.param or "", describe(e))
        recent = stripe.PaymentIntent.list(limit=100)
        self.assertFalse(
            [p.id for p in recent.data if meta(p, "tag") == label],
            "a refused create creates nothing",
        )


class BalanceTests(SettleTestCase):
    def test_balance_shows_a_usd_payment(self):
        pi = paid_intent(2100)
        self.assertEqual(pi.status, "succeeded")
        balance = stripe.Balance.retrieve()
        self.assertEqual(balance.object, "balance")
        for kind in ("available", "pending"):
            entries = balance[kind]
            self.assertIsInstance(entries, list, kind)
            for entry in entries:
                self.assertIsInstance(entry["amount"], int, entry)
                self.assertIsInstance(entry["currency"], str, entry)
        usd = [e["amount"] for e in balance.pending + balance.available if e["currency"] == "usd"]
        self.assertTrue(usd and max(usd) > 0, "a usd entry with a positive amount: %s" % balance)


class EventTests(SettleTestCase):
    def test_a_succeeded_payment_is_an_event(self):
        pi = paid_intent(2200)
        self.assertEqual(pi.status, "succeeded")

        def find():
            for evt in stripe.Event.list(limit=100).data:
                if evt.type == "payment_intent.succeeded" and evt["data"]["object"]["id"] == pi.id:
                    return evt
            return None

        evt = poll(find, EVENT_WAIT_SECONDS)
        self.assertIsNotNone(
            evt, "payment_intent.succeeded for %s within %ss" % (pi.id, EVENT_WAIT_SECONDS)
        )
        self.assertTrue(evt.id.startswith("evt_"), evt.id)
        self.assertEqual(evt.object, "event")

        fetched = stripe.Event.retrieve(evt.id)
        self.assertEqual(fetched.id, evt.id)
        self.assertEqual(fetched.type, "payment_intent.succeeded")
        self.assertEqual(fetched["data"]["object"]["id"], pi.id)
        self.assertEqual(fetched["data"]["object"]["status"], "succeeded")


class WebhookEndpointTests(SettleTestCase):
    ENABLED = ["payment_intent.succeeded", "refund.updated", "charge.refunded"]

    def test_deliveries_verify_with_the_sdk(self):
        with WebhookReceiver() as receiver:
            ep = stripe.WebhookEndpoint.create(url=receiver.url, enabled_events=self.ENABLED)
            try:
                self.check_endpoint(ep, receiver)
            except BaseException:
                try:  # no deliveries to a receiver that is gone
                    stripe.WebhookEndpoint.delete(ep.id)
                except stripe.StripeError:
                    pass
                raise

    def check_endpoint(self, ep, receiver):
        self.assertTrue(ep.id.startswith("we_"), ep.id)
        self.assertEqual(ep.object, "webhook_endpoint")
        self.assertEqual(ep.url, receiver.url)
        self.assertEqual(sorted(ep.enabled_events), sorted(self.ENABLED))
        secret = ep.secret
        self.assertTrue(secret and secret.startswith("whsec_"), "whsec_ secret on create")

        self.assertEqual(stripe.WebhookEndpoint.retrieve(ep.id).url, receiver.url)
        modified = stripe.WebhookEndpoint.modify(ep.id, description="sdk suite")
        self.assertEqual(modified.description, "sdk suite")
        self.assertIn(ep.id, [x.id for x in stripe.WebhookEndpoint.list(limit=100).data])

        pi = paid_intent(2300)
        self.assertEqual(pi.status, "succeeded")

        problems = []

        def find():
            for body, signature, headers in receiver.received():
                try:
                    event = stripe.Webhook.construct_event(body, signature, secret)
                except (stripe.SignatureVerificationError, ValueError) as e:
                    problem = "%s (headers: %s)" % (e, sorted(headers))
                    if problem not in problems:
                        problems.append(problem)
                    continue
                if (
                    event.type == "payment_intent.succeeded"
                    and event["data"]["object"]["id"] == pi.id
                ):
                    return body, signature, event
            return None

        found = poll(find, WEBHOOK_WAIT_SECONDS)
        self.assertIsNotNone(
            found,
            "a verifiable payment_intent.succeeded for %s within %ss; %d deliveries, problems: %s"
            % (pi.id, WEBHOOK_WAIT_SECONDS, len(receiver.received()), problems),
        )
        body, signature, event = found
        self.assertTrue(event.id.startswith("evt_"), event.id)
        self.assertEqual(event["data"]["object"]["status"], "succeeded")
        self.assertEqual(problems, [], "every delivery verifies")
        for raw, _, _ in receiver.received():
            self.assertIn(json.loads(raw)["type"], self.ENABLED, "only the enabled events are sent")

        tampered = body.replace(pi.id.encode(), (pi.id[:-1] + "X").encode())
        self.assertNotEqual(tampered, body)
        with self.assertRaises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(tampered, signature, secret)

        stripe.Refund.create(payment_intent=pi.id, amount=300)

        def delivered(event_type):
            """The verified delivery of `event_type` about this payment, once it came."""

            def find_it():
                for raw, sig, _ in receiver.received():
                    event = stripe.Webhook.construct_event(raw, sig, secret)
                    if event.type == event_type and event["data"]["object"]["payment_intent"] == pi.id:
                        return event
                return None

            event = poll(find_it, WEBHOOK_WAIT_SECONDS)
            self.assertIsNotNone(event, "a verifiable %s for %s" % (event_type, pi.id))
            return event

        refund_event = delivered("refund.updated")
        self.assertEqual(refund_event["data"]["object"]["amount"], 300)
        self.assertEqual(refund_event["data"]["object"]["status"], "succeeded")

        charge_event = delivered("charge.refunded")
        charge = charge_event["data"]["object"]
        self.assertEqual(charge["object"], "charge")
        self.assertEqual(charge["id"], pi.latest_charge)
        self.assertEqual(charge["amount_refunded"], 300)
        self.assertFalse(charge["refunded"], "a partial refund")

        paused = stripe.WebhookEndpoint.modify(ep.id, disabled=True)
        self.assertEqual(paused.status, "disabled")
        self.assertEqual(stripe.WebhookEndpoint.modify(ep.id, disabled=False).status, "enabled")

        deleted = stripe.WebhookEndpoint.delete(ep.id)
        self.assertEqual(deleted.id, ep.id)
        self.assertTrue(deleted.deleted)
        with self.assertRaises(stripe.InvalidRequestError) as caught:
            stripe.WebhookEndpoint.retrieve(ep.id)
        self.assert_status(caught.exception, 404)

    def test_enabled_events_must_be_stripe_types_settle_sends(self):
        for bad in ["payment.captured", "charge.dispute.created", "nope.*"]:
            with self.assertRaises(stripe.InvalidRequestError) as caught:
                stripe.WebhookEndpoint.create(
                    url="https://example.com/hooks", enabled_events=["payment_intent.succeeded", bad]
                )
            self.assert_status(caught.exception, 400)
            self.assertEqual(caught.exception.param, "enabled_events[1]", bad)
        with self.assertRaises(stripe.InvalidRequestError) as caught:
            stripe.WebhookEndpoint.create(url="ftp://example.com/hooks", enabled_events=["*"])
        self.assertEqual(caught.exception.param, "url")
        with self.assertRaises(stripe.InvalidRequestError) as caught:
            stripe.WebhookEndpoint.create(url="https://example.com/hooks", enabled_events=["*"], connect=True)
        self.assertEqual(caught.exception.param, "connect")


class AuthenticationTests(SettleTestCase):
    def test_a_wrong_key_is_an_authentication_error(self):
        with self.assertRaises(stripe.AuthenticationError) as caught:
            stripe.PaymentIntent.list(limit=1, api_key="sk_test_" + "x" * 43)
        self.assert_status(caught.exception, 401)

    def basic_get(self, user):
        token = base64.b64encode((user + ":").encode()).decode()
        request = urllib.request.Request(
            BASE + "/v1/payment_intents?limit=1", headers={"Authorization": "Basic " + token}
        )
        try:
            with _DIRECT.open(request, timeout=REQUEST_TIMEOUT_SECONDS) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as e:
            return e.code, None

    def test_basic_auth_with_the_key_as_user_name(self):
        status, body = self.basic_get(KEY)
        self.assertEqual(status, 200)
        self.assertEqual(body["object"], "list")
        self.assertIsInstance(body["data"], list)
        status, _ = self.basic_get("sk_test_" + "x" * 43)
        self.assertEqual(status, 401)


if __name__ == "__main__":
    if not BASE or not KEY:
        sys.stderr.write("SETTLE_STRIPE_BASE and SETTLE_STRIPE_KEY must be set\n")
        sys.exit(2)
    unittest.main(verbosity=2)
