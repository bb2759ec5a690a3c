// Staff dashboard: arrivals per minute against the deadline, queue depth and workers per task,
// step latencies. Redrawn from /api/staff/dashboard whenever the staff topic of a course this user
// teaches (course.<id>.staff: arrivals, finishes, quarantines) or the fleet topic says something changed.
// "Recent activity" opens with the latest events of those topics, read from the audit trail at load,
// then grows live; autoscaler decisions are listed only for the pools they change.
import { follow } from './live.js';
import { api, clockTime, throttle } from './util.js';
import { barChart } from './svgplot.js';

const root = document.getElementById('dashboard');
const status = document.getElementById('dashboard-status');
const feed = document.getElementById('feed');
const feedEmpty = document.getElementById('feed-empty');
const FEED_LENGTH = 12;
// Read per topic at load, more than are shown: old no-op autoscaler decisions are skipped.
const RECENT_PER_TOPIC = 50;
const topics = JSON.parse(root.dataset.topics);

function draw(data) {
  const start = Date.parse(data.window.start);
  const labels = data.arrivals_per_minute.map((_, index) => clockTime(new Date(start + index * 60000).toISOString()).slice(0, 5));
  const markers = data.deadlines
    .map((deadline) => ({ index: Math.floor((Date.parse(deadline.at) - start) / 60000), text: `deadline: ${deadline.title}` }))
    .filter((marker) => marker.index >= 0 && marker.index < data.arrivals_per_minute.length);
  const total = data.arrivals_per_minute.reduce((a, b) => a + b, 0);
  barChart(document.getElementById('arrivals-plot'), {
    series: [{ name: 'arrivals', values: data.arrivals_per_minute, className: 'arrivals' }],
    labels, markers, labelEvery: 10,
    summary: `${total} submissions in the last hour; latest minute ${data.arrivals_per_minute.at(-1)}.`
      + (data.deadlines.length ? ` Deadlines in view: ${data.deadlines.map((d) => d.title).join(', ')}.` : ''),
  });
  barChart(document.getElementById('queues-plot'), {
    series: [
      { name: 'jobs waiting', values: data.queues.map((q) => Math.max(0, q.depth)), className: 'depth' },
      { name: 'workers', values: data.queues.map((q) => q.replicas ?? (q.worker_alive ? 1 : 0)), className: 'workers' },
    ],
    labels: data.queues.map((q) => q.task),
    summary: data.queues.map((q) => `${q.task}: ${q.depth} waiting, ${q.replicas ?? (q.worker_alive ? 'at least 1' : 'no')} workers`).join('; '),
  });
  const steps = Object.keys(data.latencies);
  barChart(document.getElementById('latency-plot'), {
    series: [
      { name: 'p50', values: steps.map((s) => data.latencies[s].p50_ms), className: 'p50' },
      { name: 'p95', values: steps.map((s) => data.latencies[s].p95_ms), className: 'p95' },
    ],
    labels: steps, unit: ' ms',
    summary: steps.map((s) => `${s}: p50 ${data.latencies[s].p50_ms ?? '–'} ms, p95 ${data.latencies[s].p95_ms ?? '–'} ms`).join('; '),
  });
  status.textContent = `Updated ${clockTime()}`;
}

async function refresh() {
  try {
    draw(await api('GET', '/api/staff/dashboard'));
  } catch (failure) {
    status.textContent = failure.detail;
  }
}
const refreshSoon = throttle(refresh, 1000);

/** The pools an autoscaler decision resizes (an event from before decisions carried `changed` included). */
function resized(data) {
  return (data.pools || []).filter((p) => p.current !== p.desired);
}

/** The feed's words for an event, or null when it changes nothing worth a line. */
function describe(envelope) {
  const data = envelope.data || {};
  if (envelope.type === 'submission.arrived') return `Submission ${data.submission_id} arrived${data.late ? ' (late)' : ''}`;
  if (envelope.type === 'submission.finished') return `Submission ${data.submission_id} ${data.status.replace('_', ' ')}`;
  if (envelope.type === 'submission.quarantined') return `Submission ${data.submission_id} quarantined`;
  if (envelope.type === 'marking.state') return markingLine(data);
  if (envelope.type === 'autoscaler.decision') {
    const pools = resized(data);
    if (!pools.length) return null;
    const dry = data.dry_run ? ' (dry run, not applied)' : '';
    return `Autoscaler: ${pools.map((p) => `${p.pool} ${p.current}→${p.desired}`).join(', ')}${dry}`;
  }
  return envelope.type;
}

/** A claim taken or let go, or a grade saved (marking.state on the course staff topic). */
function markingLine(data) {
  const submission = `Submission ${data.submission_id}`;
  if (data.state === 'marking') return `${submission} being marked${data.marker_name ? ` by ${data.marker_name}` : ''}`;
  if (data.state === 'marked') return `${submission} marked, awaiting release`;
  return `${submission} back in the marking queue`;
}

function feedItem(envelope) {
  const text = describe(envelope);
  if (text === null) return null;
  const item = document.createElement('li');
  item.textContent = `${clockTime(envelope.at)} ${text}`;
  return item;
}

function onEvent(envelope) {
  const item = feedItem(envelope);
  if (item) {
    feed.prepend(item);
    while (feed.children.length > FEED_LENGTH) feed.lastElementChild.remove();
    feedEmpty.hidden = true;
  }
  refreshSoon();
}

/** The latest events each topic had when the page was rendered (up to its seq), newest first, below any live ones. */
async function showRecent() {
  const pages = await Promise.all(topics.map(({ topic, seq }) => {
    const after = Math.max(0, Number(seq) - RECENT_PER_TOPIC);
    return api('GET', `/api/topics/${encodeURIComponent(topic)}/events?after=${after}`)
      .then((body) => body.events.filter((e) => e.seq <= Number(seq)))
      .catch(() => []);
  }));
  const recent = pages.flat().sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  for (const envelope of recent) {
    if (feed.children.length >= FEED_LENGTH) break;
    const item = feedItem(envelope);
    if (item) feed.append(item);
  }
  feedEmpty.hidden = feed.children.length > 0;
}

showRecent();
for (const { topic, seq } of topics) follow(topic, Number(seq), onEvent);

refresh();
// Queue depth also changes without events (workers draining): redraw now and then.
window.setInterval(refreshSoon, 10000);
