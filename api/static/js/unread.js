// The courses list: unread class messages per course and in the page title, live. The counts are
// the server's (each user's read position is stored there); a new event on a course topic asks
// for them again, so a deleted or hidden message stops counting too.
import { follow } from './live.js';
import { api, throttle } from './util.js';

const baseTitle = document.title;

function render(answer) {
  for (const [courseId, entry] of Object.entries(answer.courses)) {
    const badge = document.querySelector(`[data-unread-course="${courseId}"]`);
    if (!badge) continue;
    badge.textContent = entry.unread === 1 ? '1 unread' : `${entry.unread} unread`;
    badge.hidden = entry.unread === 0;
  }
  document.title = answer.total > 0 ? `(${answer.total}) ${baseTitle}` : baseTitle;
}

const refresh = throttle(() => { api('GET', '/api/chat/unread').then(render).catch(() => {}); }, 1000);

api('GET', '/api/chat/unread').then((answer) => {
  render(answer);
  for (const entry of Object.values(answer.courses)) {
    follow(entry.topic, entry.seq, refresh);
  }
}).catch(() => {});
