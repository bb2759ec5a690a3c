// The course page: class messages on course.<id>, live. History comes from the audit trail:
// the page follows the topic from seq 0, so wamp.js fetches everything there is and then
// continues live; after a reconnect it fetches from the last seq shown (no gap, no duplicate).
// Students ask questions and write notes (published through the router); staff answer, post
// pinned announcements, hide, delete and mute (through the api, which checks they are staff).
import { client, follow } from './live.js';
import { api, announce, localTime, showError, throttle } from './util.js';

const root = document.getElementById('course');
const courseId = Number(root.dataset.courseId);
const topic = root.dataset.topic;
const me = Number(root.dataset.userId);
const isStaff = root.dataset.staff === 'true';
const people = JSON.parse(document.getElementById('course-people').textContent);
const list = document.getElementById('messages');
const pinned = document.getElementById('announcements');
const noPinned = document.getElementById('no-announcements');
const baseTitle = document.title;

const items = new Map();   // seq -> {li, envelope}
const orphans = new Map(); // question seq -> answers that arrived before it (pruned or hidden question)
let lastSeq = 0;
let unseen = 0;

const REFUSALS = {
  'handin.error.muted': 'Staff have muted you in this course: your message was not sent.',
  'handin.error.rate_limited': 'You are sending messages too quickly: wait a little, then send again.',
  'handin.error.message_too_large': 'This message is too long to send: shorten it.',
  'wamp.error.not_authorized': 'You may not post in this course.',
  'handin.error.unavailable': 'Not sent: the server is busy. Try again in a moment.',
};

function nameOf(id) {
  const person = people[String(id)];
  return person ? person.name : 'A former member';
}

function isStaffMember(id) {
  return Boolean(people[String(id)]?.staff);
}

function textOf(data) {
  const args = data.args ?? data.hidden_args;
  if (typeof data.text === 'string') return data.text;
  if (typeof data.hidden_text === 'string') return data.hidden_text;
  return Array.isArray(args) && args.length ? String(args[0]) : '';
}

function kwargsOf(data) {
  return data.kwargs ?? data.hidden_kwargs ?? {};
}

function button(label, onClick) {
  const element = document.createElement('button');
  element.type = 'button';
  element.className = 'link-button';
  element.textContent = label;
  element.addEventListener('click', onClick);
  return element;
}

function moderate(seq, what) {
  const error = document.getElementById('message-error');
  const request = what === 'delete'
    ? api('DELETE', `/api/courses/${courseId}/chat/${seq}`)
    : api('POST', `/api/courses/${courseId}/chat/${seq}/hide`, { hidden: what === 'hide' });
  request.catch((failure) => showError(error, failure.detail));
}

function startReply(seq, text) {
  const form = document.getElementById('message-form');
  form.dataset.replyTo = String(seq);
  document.getElementById('reply-to').hidden = false;
  document.getElementById('reply-to-text').textContent = `Answering: “${text.slice(0, 80)}”`;
  document.getElementById('message-label').textContent = 'Your answer';
  document.getElementById('message-question').checked = false;
  document.getElementById('message-text').focus();
}

function cancelReply() {
  const form = document.getElementById('message-form');
  delete form.dataset.replyTo;
  document.getElementById('reply-to').hidden = true;
  document.getElementById('message-label').textContent = 'Your question or message';
}

function renderItem(envelope) {
  const { data, seq } = envelope;
  const kind = envelope.type === 'announcement' ? 'announcement' : (kwargsOf(data).kind || 'note');
  const li = document.createElement('li');
  li.className = `chat-item chat-${kind}`;
  li.dataset.seq = String(seq);
  li.dataset.author = String(data.author_id);
  const meta = document.createElement('p');
  meta.className = 'chat-meta';
  const who = document.createElement('strong');
  who.textContent = nameOf(data.author_id) + (isStaffMember(data.author_id) ? ' (staff)' : '');
  const when = document.createElement('time');
  when.dateTime = envelope.at;
  when.textContent = localTime(envelope.at);
  meta.append(who, ' · ', when);
  if (kind === 'question') {
    const badge = document.createElement('span');
    badge.className = 'badge chat-state';
    badge.textContent = 'Question';
    meta.append(' ', badge);
  }
  if (data.hidden) {
    const badge = document.createElement('span');
    badge.className = 'badge warn chat-hidden';
    badge.textContent = 'Hidden from students';
    meta.append(' ', badge);
  }
  const body = document.createElement('p');
  body.className = 'chat-text';
  body.textContent = textOf(data);
  li.append(meta, body);
  const actions = document.createElement('p');
  actions.className = 'chat-actions';
  if (isStaff && kind === 'question') actions.append(button('Answer', () => startReply(seq, textOf(data))), ' ');
  if (isStaff) {
    actions.append(
      data.hidden ? button('Show to students', () => moderate(seq, 'show')) : button('Hide', () => moderate(seq, 'hide')),
      ' ',
      button('Delete', () => moderate(seq, 'delete')),
    );
  }
  if (actions.childNodes.length) li.append(actions);
  if (kind === 'question') {
    const replies = document.createElement('ul');
    replies.className = 'chat-replies';
    replies.setAttribute('aria-label', 'Answers');
    li.append(replies);
  }
  return { li, kind };
}

function insertInOrder(container, li, seq) {
  const later = [...container.children].find((child) => Number(child.dataset.seq) > seq);
  container.insertBefore(li, later || null);
}

function markAnswered(questionSeq) {
  const question = items.get(questionSeq);
  const badge = question?.li.querySelector('.chat-state');
  if (badge) {
    badge.textContent = 'Answered';
    badge.classList.add('ok');
    question.li.dataset.answered = 'true';
  }
}

function show(envelope) {
  const { data } = envelope;
  if (data.deleted || (data.hidden && !isStaff)) return false;
  remove(envelope.seq);
  const { li, kind } = renderItem(envelope);
  items.set(envelope.seq, { li, envelope });
  if (kind === 'announcement') {
    // Newest announcement first.
    const older = [...pinned.children].find((child) => Number(child.dataset.seq) < envelope.seq);
    pinned.insertBefore(li, older || null);
    noPinned.hidden = true;
    return true;
  }
  const replyTo = Number(kwargsOf(data).reply_to);
  if (kind === 'answer' && replyTo) {
    const question = items.get(replyTo);
    if (question && question.li.querySelector('.chat-replies')) {
      insertInOrder(question.li.querySelector('.chat-replies'), li, envelope.seq);
      if (isStaffMember(data.author_id)) markAnswered(replyTo);
      return true;
    }
    orphans.set(replyTo, [...(orphans.get(replyTo) || []), envelope]);
  }
  insertInOrder(list, li, envelope.seq);
  for (const answer of orphans.get(envelope.seq) || []) show(answer);
  orphans.delete(envelope.seq);
  return true;
}

function remove(seq) {
  const item = items.get(seq);
  if (!item) return;
  items.delete(seq);
  item.li.remove();
  noPinned.hidden = pinned.children.length > 0;
}

async function showAgain(seq) {
  // A student's page does not have the text of a message that was hidden: read it once more.
  const answer = await api('GET', `/api/topics/${encodeURIComponent(topic)}/events?after=${seq - 1}`);
  const envelope = (answer.events || []).find((event) => event.seq === seq);
  if (envelope) show(envelope);
}

const sendRead = throttle(() => {
  api('POST', `/api/courses/${courseId}/read`, { seq: lastSeq }).catch(() => {});
}, 2000);

function updateTitle() {
  document.title = unseen > 0 ? `(${unseen}) ${baseTitle}` : baseTitle;
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    unseen = 0;
    updateTitle();
    sendRead();
  }
});

follow(topic, 0, (envelope) => {
  lastSeq = Math.max(lastSeq, envelope.seq);
  let shown = false;
  if (envelope.type === 'message' || envelope.type === 'announcement') {
    shown = show(envelope);
    if (shown && envelope.data.author_id !== me && envelope.type === 'announcement') {
      announce(`Announcement from ${nameOf(envelope.data.author_id)}`);
    }
  } else if (envelope.type === 'message.deleted') {
    remove(envelope.data.seq);
  } else if (envelope.type === 'message.hidden') {
    const item = items.get(envelope.data.seq);
    if (isStaff && item) {
      show({ ...item.envelope, data: { ...item.envelope.data, hidden: envelope.data.hidden } });
    } else if (envelope.data.hidden) {
      remove(envelope.data.seq);
    } else {
      showAgain(envelope.data.seq).catch(() => {});
    }
  }
  if (document.visibilityState === 'visible') {
    sendRead();
  } else if (shown && envelope.data.author_id !== me) {
    unseen += 1;
    updateTitle();
  }
});

const form = document.getElementById('message-form');
document.getElementById('reply-cancel').addEventListener('click', cancelReply);
form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const error = document.getElementById('message-error');
  const status = document.getElementById('message-status');
  const text = form.text.value.trim();
  if (!text) return;
  showError(error, '');
  status.textContent = 'Sending…';
  const replyTo = Number(form.dataset.replyTo) || null;
  const kwargs = replyTo ? { kind: 'answer', reply_to: replyTo } : { kind: form.question.checked ? 'question' : 'note' };
  try {
    if (client.state !== 'open') await client.connect();
    await client.publish(topic, [text], kwargs, { excludeMe: false });
    form.text.value = '';
    status.textContent = 'Sent.';
    cancelReply();
  } catch (failure) {
    status.textContent = '';
    const uri = failure.uri || failure.message;
    showError(error, REFUSALS[uri] || 'Not sent: the connection is down. Try again in a moment.');
  }
});

const announceForm = document.getElementById('announce-form');
announceForm?.addEventListener('submit', async (event) => {
  event.preventDefault();
  const error = document.getElementById('announce-error');
  const status = document.getElementById('announce-status');
  showError(error, '');
  status.textContent = 'Posting…';
  try {
    const answer = await api('POST', `/api/courses/${courseId}/announcements`, {
      text: announceForm.text.value,
      email: announceForm.email.checked,
    });
    announceForm.text.value = '';
    announceForm.email.checked = false;
    // The mail goes out in the background, one per student.
    status.textContent = answer.emailed ? 'Posted; emailing it to the class.' : 'Posted.';
  } catch (failure) {
    status.textContent = '';
    showError(error, failure.detail);
  }
});

const muteForm = document.getElementById('mute-form');
muteForm?.addEventListener('submit', async (event) => {
  event.preventDefault();
  const error = document.getElementById('mute-error');
  const status = document.getElementById('mute-status');
  showError(error, '');
  try {
    const answer = await api('POST', `/api/courses/${courseId}/mutes`, {
      user_id: Number(muteForm.user_id.value), minutes: Number(muteForm.minutes.value),
    });
    const name = nameOf(answer.user_id);
    status.textContent = answer.muted ? `${name} is muted until ${localTime(answer.until)}.` : `${name} may post again.`;
  } catch (failure) {
    status.textContent = '';
    showError(error, failure.detail);
  }
});
