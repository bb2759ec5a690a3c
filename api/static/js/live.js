// One WebSocket session per page, shared by every script on it: ES modules are evaluated once,
// so every `import { follow } from './live.js'` gets this one client, and its connect() lets
// every subscriber share the one connection attempt (wamp.js does tickets, reconnects,
// resubscribes and gap fetches). Shows the connection state in the header: after a few failed
// attempts "Offline — retrying in N s" with a "Retry now" button, then "Live" again.
import { HandinWamp } from './wamp.js';

const TEXT = {
  idle: '', connecting: 'Connecting…', open: 'Live', reconnecting: 'Connection lost: reconnecting…',
  closed: 'Offline: reload the page to reconnect',
};

export const client = new HandinWamp({ ticketUrl: '/api/ws-ticket' });
// Tests and curious users can look at the connection from the console.
window.handinLive = client;

const indicator = document.getElementById('connection');
let retryButton = null;
let ticker = null;
let latest = null;

function offlineText(status) {
  if (!status.retryAt) return 'Offline — trying to reconnect…';
  const seconds = Math.max(1, Math.ceil((status.retryAt - Date.now()) / 1000));
  return seconds < 90 ? `Offline — retrying in ${seconds} s` : `Offline — retrying in ${Math.round(seconds / 60)} min`;
}

function showRetry(visible) {
  if (!indicator) return;
  if (visible && !retryButton) {
    // A real <button> next to the status (not inside it): keyboard-reachable, and pressing it
    // does not make the live region read the button's label out.
    retryButton = document.createElement('button');
    retryButton.type = 'button';
    retryButton.className = 'link-button connection-retry';
    retryButton.textContent = 'Retry now';
    retryButton.addEventListener('click', () => client.retryNow());
    indicator.after(retryButton);
  }
  if (retryButton) retryButton.hidden = !visible;
}

function render() {
  if (!indicator || !latest) return;
  const text = latest.state === 'offline' ? offlineText(latest) : TEXT[latest.state] ?? latest.state;
  indicator.dataset.state = latest.state;
  // Only a change of words is written, so the polite live region is not re-announced for nothing.
  if (indicator.textContent !== text) indicator.textContent = text;
}

client.onStatus((status) => {
  latest = status;
  render();
  showRetry(status.state === 'offline');
  if (status.state === 'offline' && ticker === null) ticker = window.setInterval(render, 1000);
  if (status.state !== 'offline' && ticker !== null) {
    window.clearInterval(ticker);
    ticker = null;
  }
});

/** Call onEvent with every envelope of `topic` after `seq`, in order, once each, across reconnects. */
export function follow(topic, seq, onEvent) {
  return client.subscribe(topic, Number(seq) || 0, onEvent);
}
