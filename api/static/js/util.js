// Small helpers every page script shares: JSON requests with clear errors, announcements, times.

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
    this.detail = detail;
  }
}

// The api answers every refusal with {"detail": "<text for a person>"}; show that text as it is.
export function detailOf(status, bodyText) {
  try {
    const body = JSON.parse(bodyText);
    if (typeof body.detail === 'string') return body.detail;
    if (Array.isArray(body.detail) && body.detail.length) {
      return body.detail.map((item) => item.msg || String(item)).join('; ');
    }
  } catch (_) { /* not JSON */ }
  if (status === 0) return 'The network connection failed. Check your connection and try again.';
  if (status === 401) return 'You are not logged in any more. Log in again.';
  return `The server refused the request (HTTP ${status}).`;
}

// The CSRF token of this page (api/middleware/csrf.py): every state-changing request sends it.
export function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]')?.content || '';
}

// Where to go after logging in: only a path on this site. The server applies the same rule
// (api/routes/auth.py safe_next): one leading slash, no backslash, no control characters.
export function safeNext(target) {
  if (typeof target !== 'string' || !target.startsWith('/') || target.startsWith('//')) return '/';
  if (/[\\\u0000-\u001f\u007f]/.test(target)) return '/';
  let decoded;
  try {
    decoded = decodeURIComponent(target);
  } catch (_) {
    return '/';
  }
  if (decoded.startsWith('//') || /[\\\u0000-\u001f\u007f]/.test(decoded)) return '/';
  const url = new URL(target, window.location.origin);
  if (url.origin !== window.location.origin) return '/';
  return url.pathname + url.search + url.hash;
}

export async function api(method, url, body) {
  const options = {
    method, credentials: 'same-origin', headers: { Accept: 'application/json', 'X-CSRF-Token': csrfToken() },
  };
  if (body !== undefined) {
    options.headers['Content-Type'] = 'application/json';
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(url, options);
  } catch (_) {
    throw new ApiError(0, detailOf(0, ''));
  }
  const text = await response.text();
  if (!response.ok) throw new ApiError(response.status, detailOf(response.status, text));
  return text ? JSON.parse(text) : null;
}

export function announce(text) {
  const region = document.getElementById('announcer');
  if (!region) return;
  // Clearing first makes screen readers repeat an identical message.
  region.textContent = '';
  window.setTimeout(() => { region.textContent = text; }, 30);
}

export function showError(element, text) {
  if (!element) return;
  element.textContent = text;
  element.hidden = !text;
}

const timeFormat = new Intl.DateTimeFormat(undefined, {
  weekday: 'short', day: 'numeric', month: 'short', year: 'numeric', hour: '2-digit', minute: '2-digit',
  second: undefined, timeZoneName: 'short',
});
const clockFormat = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });

export function localTime(iso) {
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? iso : timeFormat.format(when);
}

export function clockTime(iso) {
  const when = iso ? new Date(iso) : new Date();
  return Number.isNaN(when.getTime()) ? '' : clockFormat.format(when);
}

export function timeElement(iso, text) {
  const element = document.createElement('time');
  element.dateTime = iso;
  element.textContent = text || localTime(iso);
  return element;
}

// Run `fn` at most once per `ms`, always ending with a final call after the last trigger.
export function throttle(fn, ms) {
  let timer = null;
  let pending = false;
  return () => {
    if (timer) { pending = true; return; }
    fn();
    timer = window.setTimeout(function release() {
      timer = null;
      if (pending) { pending = false; fn(); timer = window.setTimeout(release, ms); }
    }, ms);
  };
}
