// One WebSocket session per page, shared by every script on it (wamp.js does tickets,
// reconnects, resubscribes and gap fetches). Shows the connection state in the header.
import { HandinWamp } from './wamp.js';

const TEXT = {
  idle: '', connecting: 'Connecting…', open: 'Live', reconnecting: 'Connection lost: reconnecting…',
  closed: 'Offline: reload the page to reconnect',
};

export const client = new HandinWamp({ ticketUrl: '/api/ws-ticket' });
// Tests and curious users can look at the connection from the console.
window.handinLive = client;

const indicator = document.getElementById('connection');
let shown = null;
client.onStatus((status) => {
  if (!indicator || status.state === shown) return;
  shown = status.state;
  indicator.dataset.state = status.state;
  indicator.textContent = TEXT[status.state] ?? status.state;
});

/** Call onEvent with every envelope of `topic` after `seq`, in order, once each, across reconnects. */
export function follow(topic, seq, onEvent) {
  return client.subscribe(topic, Number(seq) || 0, onEvent);
}
