// Staff dashboard: arrivals per minute against the deadline, queue depth and workers per task,
// step latencies. Redrawn from /api/staff/dashboard whenever staff.dashboard says something changed.
import { follow } from './live.js';
import { api, clockTime, throttle } from './util.js';
import { barChart } from './svgplot.js';

const root = document.getElementById('dashboard');
const status = document.getElementById('dashboard-status');
const feed = document.getElementById('feed');
const FEED_LENGTH = 12;

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

function describe(envelope) {
  const data = envelope.data || {};
  if (envelope.type === 'submission.arrived') return `Submission ${data.submission_id} arrived${data.late ? ' (late)' : ''}`;
  if (envelope.type === 'submission.finished') return `Submission ${data.submission_id} ${data.status.replace('_', ' ')}`;
  if (envelope.type === 'autoscaler.decision') {
    return `Autoscaler: ${(data.pools || []).map((p) => `${p.pool} ${p.current}→${p.desired}`).join(', ')}`;
  }
  return envelope.type;
}

follow(root.dataset.topic, Number(root.dataset.seq), (envelope) => {
  const item = document.createElement('li');
  item.textContent = `${clockTime(envelope.at)} ${describe(envelope)}`;
  feed.prepend(item);
  while (feed.children.length > FEED_LENGTH) feed.lastElementChild.remove();
  refreshSoon();
});

refresh();
// Queue depth also changes without events (workers draining): redraw now and then.
window.setInterval(refreshSoon, 10000);
