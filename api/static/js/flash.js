// Flash messages: rendered from the database on every page view, pushed live on user.<id>.
//
// A message counts as seen only after it has been on screen for CONFIRM_MS in total: the page
// visible (Page Visibility API) and the message at least half in view (IntersectionObserver);
// the clock pauses while either is false. Clicking its link or button, or dismissing it,
// confirms it at once. Anything unconfirmed (never seen, hidden tab, user navigated away)
// comes back on the next page view.
import { follow } from './live.js';
import { csrfToken, safeNext } from './util.js';

const CONFIRM_MS = Number(document.body.dataset.flashConfirmMs || 3000);
const TICK_MS = 200;
const toasts = document.getElementById('toasts');
const modal = document.getElementById('flash-modal');
const shown = new Map(); // id -> view
const modalQueue = [];
let modalView = null;

const observer = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const view = shown.get(Number(entry.target.dataset.flashId));
    if (view) view.inView = entry.isIntersecting && entry.intersectionRatio >= 0.5;
  }
}, { threshold: [0, 0.5, 1] });

function confirm(view, reason) {
  if (view.confirmed) return;
  view.confirmed = true;
  view.element.dataset.confirmed = reason;
  // keepalive: a click on the link navigates away at once, the confirmation must still arrive.
  fetch(`/api/flashes/${view.flash.id}/confirm`, {
    method: 'POST',
    credentials: 'same-origin',
    keepalive: true,
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrfToken() },
    body: JSON.stringify({ reason }),
  }).catch(() => { view.confirmed = false; });
}

function remove(view) {
  shown.delete(view.flash.id);
  observer.unobserve(view.element);
  if (view === modalView) {
    modal.close();
    modalView = null;
    showNextModal();
  } else {
    view.element.remove();
  }
}

// A path on this site, or null: `//host`, other origins, backslashes and javascript: are never followed.
function sameSitePath(target) {
  if (typeof target !== 'string' || !target) return null;
  const path = safeNext(target);
  return path === '/' && target !== '/' ? null : path;
}

function actions(view) {
  const { flash } = view;
  const parts = [];
  const linkUrl = sameSitePath(flash.link_url);
  const opens = typeof flash.button_action === 'string' && flash.button_action.startsWith('open:');
  const buttonUrl = sameSitePath(opens ? flash.button_action.slice('open:'.length) : flash.button_action);
  if (linkUrl) {
    const link = document.createElement('a');
    link.href = linkUrl;
    link.textContent = flash.link_text || 'Open';
    link.addEventListener('click', () => confirm(view, 'clicked'));
    parts.push(link);
  }
  if (flash.button_text && buttonUrl && !opens) {
    const button = document.createElement('button');
    button.type = 'button';
    button.textContent = flash.button_text;
    button.addEventListener('click', async () => {
      confirm(view, 'clicked');
      await fetch(buttonUrl, {
        method: 'POST', credentials: 'same-origin', headers: { 'X-CSRF-Token': csrfToken() },
      }).catch(() => null);
      remove(view);
    });
    parts.push(button);
  } else if (flash.button_text && buttonUrl) {
    const link = document.createElement('a');
    link.className = 'button';
    link.href = buttonUrl;
    link.textContent = flash.button_text;
    link.addEventListener('click', () => confirm(view, 'clicked'));
    parts.push(link);
  }
  const dismiss = document.createElement('button');
  dismiss.type = 'button';
  dismiss.className = 'dismiss';
  dismiss.textContent = flash.modal ? 'OK' : 'Dismiss';
  dismiss.setAttribute('aria-label', `Dismiss message: ${flash.text}`);
  dismiss.addEventListener('click', () => {
    confirm(view, 'dismissed');
    remove(view);
  });
  parts.push(dismiss);
  return parts;
}

function showToast(view) {
  const element = document.createElement('div');
  element.className = `toast kind-${view.flash.kind}`;
  // Errors interrupt; everything else waits its turn (the container is a polite status region).
  if (view.flash.kind === 'error') element.setAttribute('role', 'alert');
  const text = document.createElement('p');
  text.textContent = view.flash.text;
  const bar = document.createElement('p');
  bar.className = 'toast-actions';
  view.element = element;
  bar.append(...actions(view));
  element.append(text, bar);
  element.dataset.flashId = view.flash.id;
  toasts.append(element);
  observer.observe(element);
}

function showNextModal() {
  if (modalView || !modalQueue.length) return;
  const view = modalQueue.shift();
  modalView = view;
  const content = modal.querySelector('[role=alert]');
  content.className = `kind-${view.flash.kind}`;
  view.element = content;
  content.dataset.flashId = view.flash.id;
  modal.querySelector('#flash-modal-text').textContent = view.flash.text;
  modal.querySelector('.modal-actions').replaceChildren(...actions(view));
  modal.showModal();
  observer.observe(content);
}

export function showFlash(flash) {
  if (shown.has(flash.id)) return;
  const view = { flash, element: null, visibleMs: 0, inView: false, confirmed: false };
  shown.set(flash.id, view);
  if (flash.modal) {
    modalQueue.push(view);
    showNextModal();
  } else {
    showToast(view);
  }
}

let last = performance.now();
window.setInterval(() => {
  const now = performance.now();
  const elapsed = now - last;
  last = now;
  if (document.visibilityState !== 'visible') return;
  for (const view of [...shown.values()]) {
    if (!view.element || !view.inView) continue;
    view.visibleMs += elapsed;
    if (view.visibleMs >= CONFIRM_MS) confirm(view, 'seen');
    const hideAfter = view.flash.auto_hide_seconds;
    if (view.confirmed && hideAfter && !view.flash.modal && view.visibleMs >= Math.max(hideAfter * 1000, CONFIRM_MS)) {
      remove(view);
    }
  }
}, TICK_MS);
// Time spent hidden never counts: restart the clock when the page comes back.
document.addEventListener('visibilitychange', () => { last = performance.now(); });

for (const flash of JSON.parse(document.getElementById('flash-data').textContent || '[]')) showFlash(flash);

const topic = document.body.dataset.userTopic;
if (topic) {
  follow(topic, Number(document.body.dataset.userSeq || 0), (envelope) => {
    if (envelope.type === 'flash') showFlash(envelope.data);
    if (envelope.type === 'flash.confirmed') {
      // Seen or dismissed in another tab: drop it here too (this tab's own confirmations stay on screen).
      const view = shown.get(envelope.data.id);
      if (view && !view.confirmed) { view.confirmed = true; remove(view); }
    }
  });
}
