// handin's browser WAMP v2 client (subscriber + publisher, wamp.2.json, ticket auth).
//
//   import { HandinWamp } from '/static/js/wamp.js';
//   const client = new HandinWamp({ ticketUrl: '/api/ws-ticket' });
//   client.onStatus((s) => console.log(s.state));   // connecting | open | reconnecting | offline | closed
//   const sub = client.subscribe('submission.42', 17, (envelope) => render(envelope));
//   await client.publish('course.3', ['hello'], { mood: 'ok' });   // resolves on PUBLISHED
//   sub.unsubscribe(); client.close();
//
// No gaps, no duplicates: a page renders from the database at seq N, subscribes with
// lastSeq N, and the client fetches `after=N` from the api once the router confirms the
// subscription (and again after every reconnect, or when a live event skips a seq).
// Each listener is called once per envelope, in seq order.
//
// One WebSocket per client, and one client per page (live.js): connect() hands every caller
// the same promise while a connection is being made, so scripts that subscribe at once share
// one socket. Only the current socket's messages and close events touch the session: a socket
// that was replaced (reconnect, retry) can say anything, and nothing happens.
// After `offlineAfter` failed attempts in a row the state is 'offline' (with `retryAt`), and
// retryNow() tries at once instead of waiting for the next attempt.

const HELLO = 1, WELCOME = 2, ABORT = 3, CHALLENGE = 4, AUTHENTICATE = 5, GOODBYE = 6, ERROR = 8;
const PUBLISH = 16, PUBLISHED = 17, SUBSCRIBE = 32, SUBSCRIBED = 33, UNSUBSCRIBE = 34, UNSUBSCRIBED = 35, EVENT = 36;

const UNAVAILABLE = 'handin.error.unavailable';  // the router could not answer now; not a refusal

const defaultEventsUrl = (topic, after) => `/api/topics/${encodeURIComponent(topic)}/events?after=${after}`;

export class HandinWamp {
  /**
   * @param {object} options
   * @param {string} [options.ticketUrl='/api/ws-ticket'] GET → {ticket, expires_in, router_url}
   * @param {string} [options.routerUrl] overrides router_url from the ticket answer
   * @param {(topic: string, after: number) => string} [options.eventsUrl] gap fetch URL
   * @param {string} [options.realm='handin']
   * @param {number} [options.initialDelayMs=500] first reconnect delay
   * @param {number} [options.maxDelayMs=30000] reconnect delay cap
   * @param {number} [options.pageSize=500] the api's page size for gap fetches
   * @param {number} [options.fetchTimeoutMs=10000] a gap fetch taking longer is abandoned and retried
   * @param {number} [options.subscribeTimeoutMs=10000] a SUBSCRIBE unanswered this long ends the session and reconnects
   * @param {number} [options.offlineAfter=3] failed attempts in a row before the state is 'offline'
   * @param {boolean} [options.autoConnect=true] connect on the first subscribe/publish
   * @param {typeof fetch} [options.fetch] @param {typeof WebSocket} [options.WebSocket] for tests
   */
  constructor(options = {}) {
    this.options = {
      ticketUrl: '/api/ws-ticket', routerUrl: null, eventsUrl: defaultEventsUrl, realm: 'handin',
      initialDelayMs: 500, maxDelayMs: 30000, pageSize: 500, fetchTimeoutMs: 10000, subscribeTimeoutMs: 10000,
      offlineAfter: 3, autoConnect: true, ...options,
    };
    this._fetch = this.options.fetch || ((...args) => window.fetch(...args));
    this._WebSocket = this.options.WebSocket || window.WebSocket;
    this._topics = new Map();      // topic -> {listeners:Set, subscriptionId, syncing, buffer, wanted}
    this._bySubscription = new Map();
    this._pending = new Map();     // request id -> {resolve, reject, kind, topic}
    this._statusListeners = new Set();
    this._nextRequest = 1;
    this._attempt = 0;
    this._socket = null;
    this._opening = false;   // between starting an attempt and its socket existing (the ticket fetch)
    this._ready = null;      // {promise, resolve}: what connect() hands out until the session is open
    this._timer = null;
    this._retryAt = null;
    this._stopped = false;
    this.state = 'idle';
    this.sessionId = null;
    this.details = null;
  }

  /** Call cb({state, attempt, delayMs, reason}) on every change; returns a function that stops it. */
  onStatus(cb) {
    this._statusListeners.add(cb);
    cb(this._status());
    return () => this._statusListeners.delete(cb);
  }

  /** Deliver every envelope of `topic` after `lastSeq` to onEvent, in order; returns {unsubscribe}. */
  subscribe(topic, lastSeq, onEvent, { onError } = {}) {
    let entry = this._topics.get(topic);
    if (!entry) {
      entry = { topic, listeners: new Set(), subscriptionId: null, syncing: false, buffer: [], requested: false };
      this._topics.set(topic, entry);
    }
    const listener = { lastSeq: Number(lastSeq) || 0, onEvent, onError };
    entry.listeners.add(listener);
    if (this.state === 'open') {
      if (entry.subscriptionId !== null) this._catchUp(entry);
      else this._sendSubscribe(entry);
    } else if (this.options.autoConnect) {
      this.connect();
    }
    return {
      unsubscribe: () => this._removeListener(entry, listener),
      get lastSeq() { return listener.lastSeq; },
    };
  }

  /** PUBLISH with acknowledge; resolves with the publication id, rejects with the error URI. */
  publish(topic, args = [], kwargs = {}, { excludeMe = true } = {}) {
    if (this.state !== 'open') {
      if (this.options.autoConnect) this.connect();
      return Promise.reject(new Error('not connected'));
    }
    const request = this._request();
    return new Promise((resolve, reject) => {
      this._pending.set(request, { kind: 'publish', resolve, reject });
      this._send([PUBLISH, request, { acknowledge: true, exclude_me: excludeMe }, topic, args, kwargs]);
    });
  }

  /**
   * Open the session (done for you by subscribe/publish). Every caller gets the same promise,
   * resolved with the state once the session is open (or closed for good); at most one attempt
   * is ever under way, so a page never opens a second socket.
   */
  connect() {
    if (this.state === 'open' || this._stopped) return Promise.resolve(this.state);
    if (!this._ready) {
      let resolve;
      const promise = new Promise((r) => { resolve = r; });
      this._ready = { promise, resolve };
    }
    if (!this._socket && !this._opening && this._timer === null) this._open();
    return this._ready.promise;
  }

  /** Try now instead of waiting for the next attempt (the page's "Retry now" button). */
  retryNow() {
    if (this._stopped || this._timer === null) return this.connect();
    clearTimeout(this._timer);
    this._timer = null;
    return this.connect();
  }

  /** GOODBYE and stay closed. */
  close() {
    this._stopped = true;
    clearTimeout(this._timer);
    this._timer = null;
    const socket = this._socket;
    if (socket && this.state === 'open') this._send([GOODBYE, {}, 'wamp.close.close_realm']);
    this._socket = null;
    socket?.close(1000);
    this._setState('closed', { reason: 'closed by page' });
    this._settleReady();
  }

  // Connection -----------------------------------------------------------------

  async _open() {
    // Set before the first await: a connect() meanwhile must not start a second attempt.
    this._opening = true;
    this._retryAt = null;
    // Once offline, the page stays "offline" while it tries, rather than flickering to "reconnecting".
    const offline = this._attempt > this.options.offlineAfter;
    this._setState(this._attempt === 0 ? 'connecting' : offline ? 'offline' : 'reconnecting');
    let ticket;
    try {
      const response = await this._fetch(this.options.ticketUrl, { credentials: 'same-origin' });
      if (response.status === 401 || response.status === 403) {
        this._opening = false;
        this._stop('logged out');
        return;
      }
      if (!response.ok) throw new Error(`ticket: HTTP ${response.status}`);
      ticket = await response.json();
    } catch (error) {
      this._opening = false;
      if (!this._stopped) this._retry(String(error));
      return;
    }
    this._opening = false;
    if (this._stopped) return;
    const url = this.options.routerUrl || ticket.router_url;
    const socket = new this._WebSocket(url, ['wamp.2.json']);
    this._socket = socket;
    // Each handler speaks for its own socket only, and only while it is the current one.
    socket.onopen = () => {
      if (this._socket !== socket) return;
      this._send([HELLO, this.options.realm, {
        roles: { subscriber: {}, publisher: { features: { publisher_exclusion: true } } },
        authmethods: ['ticket'],
      }]);
    };
    socket.onmessage = (message) => {
      if (this._socket === socket) this._receive(message.data, ticket.ticket);
    };
    socket.onclose = (event) => {
      if (this._socket !== socket) return;
      this._socket = null;
      this._lost(event.reason || `socket closed (${event.code})`);
    };
  }

  _stop(reason) {
    this._stopped = true;
    this._setState('closed', { reason });
    this._settleReady();
  }

  _settleReady() {
    const ready = this._ready;
    this._ready = null;
    ready?.resolve(this.state);
  }

  _lost(reason) {
    this.sessionId = null;
    this._bySubscription.clear();
    for (const entry of this._topics.values()) {
      entry.subscriptionId = null;
      entry.requested = false;
      entry.syncing = false;
      entry.buffer = [];
    }
    for (const pending of this._pending.values()) pending.reject?.(new Error('connection lost'));
    this._pending.clear();
    if (this._stopped) this._stop(reason);
    else this._retry(reason);
  }

  _retry(reason) {
    // Exponential backoff with "equal jitter": half fixed, half random, so a router restart
    // doesn't bring every browser back in the same millisecond.
    const base = Math.min(this.options.maxDelayMs, this.options.initialDelayMs * 2 ** this._attempt);
    let delayMs = Math.round(base / 2 + Math.random() * base / 2);
    // The router's "not now" (ABORT details.retry_after, when it is admitting a storm): wait at
    // least that, spread over half as long again so the refused don't all come back together.
    const hintMs = this._retryHintMs || 0;
    this._retryHintMs = 0;
    if (hintMs > delayMs) delayMs = Math.round(hintMs * (1 + Math.random() / 2));
    this._attempt += 1;
    this._retryAt = Date.now() + delayMs;
    this._setState(this._attempt > this.options.offlineAfter ? 'offline' : 'reconnecting', { reason, delayMs });
    this._timer = setTimeout(() => { this._timer = null; this._open(); }, delayMs);
  }

  // Messages -------------------------------------------------------------------

  _receive(data, ticket) {
    let message;
    try { message = JSON.parse(data); } catch { return this._abort('invalid JSON from router'); }
    if (!Array.isArray(message)) return this._abort('invalid message from router');
    switch (message[0]) {
      case CHALLENGE: return this._send([AUTHENTICATE, ticket, {}]);
      case WELCOME: return this._welcome(message);
      case ABORT: return this._aborted(message[2], message[1]);
      case GOODBYE: return this._goodbye(message[2]);
      case SUBSCRIBED: return this._subscribed(message[1], message[2]);
      case UNSUBSCRIBED: return this._pending.delete(message[1]);
      case PUBLISHED: return this._settle(message[1], (p) => p.resolve(message[2]));
      case EVENT: return this._event(message[1], message[4], message[3]);
      case ERROR: return this._error(message[2], message[4]);  // [8, type, request, details, uri]
      default: return undefined;
    }
  }

  _welcome(message) {
    this.sessionId = message[1];
    this.details = message[2];
    this._attempt = 0;
    this._setState('open');
    this._settleReady();
    for (const entry of this._topics.values()) this._sendSubscribe(entry);
  }

  _aborted(reason, details) {
    // A refused ticket is not retried at once: the next attempt fetches a fresh one after a delay.
    // Only the current socket gets here: a stale socket's ABORT (e.g. the router's handshake
    // timeout on a socket this page gave up) never ends the live session.
    if (reason === 'wamp.close.logout') this._stopped = true;
    if (typeof details?.retry_after === 'number') this._retryHintMs = details.retry_after * 1000;
    this._notify({ reason: details?.message || reason });
    this._socket?.close(1000);
  }

  _goodbye(reason) {
    this._send([GOODBYE, {}, 'wamp.close.goodbye_and_out']);
    if (reason === 'wamp.close.logout') this._stopped = true;
    if (reason === 'wamp.close.system_shutdown') this._attempt = 0;  // reconnect soon, to another replica
    this._socket?.close(1000);
  }

  _sendSubscribe(entry) {
    if (entry.requested || !entry.listeners.size) return;
    entry.requested = true;
    const request = this._request();
    this._pending.set(request, { kind: 'subscribe', topic: entry.topic });
    this._send([SUBSCRIBE, request, {}, entry.topic]);
    // A router that never answers would leave the page silently stale: start over on a
    // new session (maybe another replica), which subscribes again and catches up.
    const socket = this._socket;
    setTimeout(() => {
      if (this._pending.has(request) && this._socket === socket) socket?.close(4000, 'subscribe unanswered');
    }, this.options.subscribeTimeoutMs);
  }

  _subscribed(request, subscriptionId) {
    const pending = this._pending.get(request);
    this._pending.delete(request);
    const entry = pending && this._topics.get(pending.topic);
    if (!entry) return;
    entry.subscriptionId = subscriptionId;
    entry.subscribeFailures = 0;
    this._bySubscription.set(subscriptionId, entry);
    if (!entry.listeners.size) return this._unsubscribe(entry);
    return this._catchUp(entry);
  }

  _event(subscriptionId, args, details) {
    const entry = this._bySubscription.get(subscriptionId);
    if (entry && details?.gap) {  // the router lost Redis a moment: fetch what may have been missed now
      if (entry.syncing) entry.gapWhileSyncing = true;
      else this._catchUp(entry);
      return;
    }
    const envelope = Array.isArray(args) ? args[0] : null;
    if (!entry || !envelope || typeof envelope.seq !== 'number') return;
    if (entry.syncing) { entry.buffer.push(envelope); return; }
    const expected = Math.min(...[...entry.listeners].map((l) => l.lastSeq)) + 1;
    if (envelope.seq > expected) {  // a seq went missing live: fetch what's between
      entry.buffer.push(envelope);
      this._catchUp(entry);
      return;
    }
    this._dispatch(entry, envelope);
  }

  _error(request, uri) {
    const pending = this._pending.get(request);
    if (!pending) return;
    this._pending.delete(request);
    if (pending.kind === 'publish') {
      pending.reject(Object.assign(new Error(uri), { uri }));
    } else if (pending.kind === 'subscribe') {
      const entry = this._topics.get(pending.topic);
      if (entry && uri === UNAVAILABLE) {
        // Not refused, just not answered in time (e.g. the router's authorisation time limit): ask again.
        entry.requested = false;
        this._retrySubscribe(entry);
        this._notify({ reason: `${pending.topic}: ${uri}` });
        return;
      }
      // Refused (e.g. wamp.error.not_authorized): tell the listeners and forget the topic.
      if (entry) {
        this._topics.delete(pending.topic);
        for (const listener of entry.listeners) listener.onError?.(uri);
      }
      this._notify({ reason: `${pending.topic}: ${uri}` });
    }
  }

  _retrySubscribe(entry) {
    entry.subscribeFailures = (entry.subscribeFailures || 0) + 1;
    const base = Math.min(this.options.maxDelayMs, this.options.initialDelayMs * 2 ** entry.subscribeFailures);
    const socket = this._socket;
    setTimeout(() => {
      if (this._socket === socket && this.state === 'open' && this._topics.get(entry.topic) === entry) {
        this._sendSubscribe(entry);
      }
    }, Math.round(base / 2 + Math.random() * base / 2));
  }

  _settle(request, fn) {
    const pending = this._pending.get(request);
    if (pending) { this._pending.delete(request); fn(pending); }
  }

  // Gap fetch ------------------------------------------------------------------

  async _catchUp(entry) {
    if (entry.syncing) return;
    entry.syncing = true;
    const subscriptionId = entry.subscriptionId;
    let failed = false;
    try {
      let after = Math.min(...[...entry.listeners].map((l) => l.lastSeq));
      for (let page = 0; page < 100; page += 1) {
        // A fetch that never answers must not hold the topic's live events back for good.
        const abort = new AbortController();
        const timer = setTimeout(() => abort.abort(), this.options.fetchTimeoutMs);
        let body;
        try {
          const response = await this._fetch(this.options.eventsUrl(entry.topic, after),
            { credentials: 'same-origin', signal: abort.signal });
          if (!response.ok) throw new Error(`events: HTTP ${response.status}`);
          body = await response.json();
        } finally {
          clearTimeout(timer);
        }
        const events = Array.isArray(body) ? body : body.events || [];
        if (entry.subscriptionId !== subscriptionId) return;  // reconnected meanwhile; that pass catches up
        for (const envelope of events) this._dispatch(entry, envelope);
        if (!events.length || (events.length < this.options.pageSize && !body.more)) break;
        after = events[events.length - 1].seq;
      }
    } catch (error) {
      failed = true;
      this._notify({ reason: `gap fetch failed: ${error}` });
    } finally {
      if (entry.subscriptionId === subscriptionId) {
        entry.syncing = false;
        if (failed) {
          // Keep the live events buffered (showing them would skip the gap) and try again.
          this._retryCatchUp(entry, subscriptionId);
        } else {
          entry.fetchFailures = 0;
          const buffered = entry.buffer.sort((a, b) => a.seq - b.seq);
          entry.buffer = [];
          for (const envelope of buffered) this._dispatch(entry, envelope);
          if (entry.gapWhileSyncing) { entry.gapWhileSyncing = false; this._catchUp(entry); }
        }
      }
    }
  }

  _retryCatchUp(entry, subscriptionId) {
    entry.fetchFailures = (entry.fetchFailures || 0) + 1;
    const base = Math.min(this.options.maxDelayMs, this.options.initialDelayMs * 2 ** entry.fetchFailures);
    const delayMs = Math.round(base / 2 + Math.random() * base / 2);
    setTimeout(() => {
      if (this._topics.get(entry.topic) === entry && entry.subscriptionId === subscriptionId) this._catchUp(entry);
    }, delayMs);
  }

  _dispatch(entry, envelope) {
    for (const listener of entry.listeners) {
      if (envelope.seq <= listener.lastSeq) continue;  // already shown: never twice
      listener.lastSeq = envelope.seq;
      try { listener.onEvent(envelope); } catch (error) { console.error(error); }
    }
  }

  // Housekeeping ---------------------------------------------------------------

  _removeListener(entry, listener) {
    entry.listeners.delete(listener);
    if (entry.listeners.size) return;
    this._topics.delete(entry.topic);
    if (entry.subscriptionId !== null) this._unsubscribe(entry);
  }

  _unsubscribe(entry) {
    this._bySubscription.delete(entry.subscriptionId);
    if (this.state === 'open') {
      const request = this._request();
      this._pending.set(request, { kind: 'unsubscribe' });
      this._send([UNSUBSCRIBE, request, entry.subscriptionId]);
    }
    entry.subscriptionId = null;
  }

  _abort(text) {
    this._send([ABORT, { message: text }, 'wamp.error.protocol_violation']);
    this._socket?.close(1002);
  }

  _request() { const id = this._nextRequest; this._nextRequest = id >= 2 ** 53 ? 1 : id + 1; return id; }

  _send(message) {
    if (this._socket && this._socket.readyState === 1) this._socket.send(JSON.stringify(message));
  }

  _status(extra = {}) { return { state: this.state, attempt: this._attempt, retryAt: this._retryAt, ...extra }; }

  _setState(state, extra = {}) { this.state = state; this._notify(extra); }

  _notify(extra) {
    const status = this._status(extra);
    for (const cb of this._statusListeners) {
      try { cb(status); } catch (error) { console.error(error); }
    }
  }
}

export default HandinWamp;
