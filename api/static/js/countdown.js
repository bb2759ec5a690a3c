// Live countdowns next to deadlines: "in 2 days 3 h", "closed 5 min ago". Ticks once a second.
// Not an aria-live region on purpose: a screen reader reads it when the user gets there, not every second.

function part(value, unit) {
  return `${value} ${unit}${value === 1 ? '' : 's'}`;
}

export function describe(milliseconds) {
  const total = Math.floor(Math.abs(milliseconds) / 1000);
  const days = Math.floor(total / 86400);
  const hours = Math.floor((total % 86400) / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  let text;
  if (days > 0) text = `${part(days, 'day')} ${part(hours, 'hour')}`;
  else if (hours > 0) text = `${part(hours, 'hour')} ${part(minutes, 'minute')}`;
  else if (minutes > 0) text = `${part(minutes, 'minute')} ${part(seconds, 'second')}`;
  else text = part(seconds, 'second');
  return milliseconds >= 0 ? `(in ${text})` : `(${text} ago)`;
}

function tick() {
  const now = Date.now();
  for (const element of document.querySelectorAll('[data-countdown]')) {
    const target = Date.parse(element.dataset.countdown);
    if (Number.isNaN(target)) continue;
    const left = target - now;
    element.textContent = describe(left);
    element.classList.toggle('soon', left > 0 && left < 3600 * 1000);
    element.classList.toggle('past', left <= 0);
  }
}

tick();
window.setInterval(tick, 1000);
