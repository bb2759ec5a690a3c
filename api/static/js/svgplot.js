// Plots as inline SVG, drawn by our own code: bar charts with optional vertical markers.
// Every chart has a text alternative (role=img + aria-label) and a caption with the numbers.

const NS = 'http://www.w3.org/2000/svg';
// Width of one character of the axis font (11px, in viewBox units), a little generous: margins are
// sized from the longest label, so a tick like "1500 ms" is never cut off at the left edge.
const CHAR_WIDTH = 7;

function node(name, attributes = {}, text) {
  const element = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

/**
 * series: [{name, values, className}] drawn side by side per category.
 * labels: category labels (every `labelEvery`-th shown); markers: [{index, text}] vertical lines.
 */
export function barChart(figure, { series, labels, markers = [], unit = '', summary, labelEvery = 1 }) {
  const width = 640;
  const height = 220;
  const count = labels.length;
  const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined))));
  const tickText = (value) => `${Math.round(value * 10) / 10}${unit}`;
  const longestTick = Math.max(...[0, 0.5, 1].map((tick) => tickText(max * tick).length));
  // Room for the y labels on the left, and for half the last x label on the right.
  const lastLabel = String(labels.at(-1) ?? '');
  const pad = {
    left: Math.max(28, longestTick * CHAR_WIDTH + 10), right: Math.max(10, (lastLabel.length * CHAR_WIDTH) / 2),
    top: 14, bottom: 42,
  };
  const plotWidth = width - pad.left - pad.right;
  const plotHeight = height - pad.top - pad.bottom;
  const slot = plotWidth / Math.max(1, count);
  const barWidth = Math.max(1, (slot * 0.8) / series.length);
  const y = (value) => pad.top + plotHeight - (value / max) * plotHeight;

  const svg = node('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': summary, class: 'chart' });
  svg.append(node('title', {}, summary));
  for (const tick of [0, 0.5, 1]) {
    const value = max * tick;
    svg.append(node('line', { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: 'grid' }));
    svg.append(node('text', { x: pad.left - 6, y: y(value) + 4, class: 'axis', 'text-anchor': 'end' }, tickText(value)));
  }
  series.forEach((s, seriesIndex) => {
    s.values.forEach((value, index) => {
      if (value === null || value === undefined) return;
      const x = pad.left + index * slot + slot * 0.1 + seriesIndex * barWidth;
      svg.append(node('rect', {
        x, y: y(value), width: barWidth, height: Math.max(0, pad.top + plotHeight - y(value)),
        class: `bar ${s.className || ''}`,
      }));
    });
  });
  labels.forEach((label, index) => {
    if (index % labelEvery !== 0) return;
    svg.append(node('text', {
      x: pad.left + index * slot + slot / 2, y: height - pad.bottom + 16, class: 'axis', 'text-anchor': 'middle',
    }, label));
  });
  for (const marker of markers) {
    const x = pad.left + marker.index * slot + slot / 2;
    svg.append(node('line', { x1: x, x2: x, y1: pad.top, y2: pad.top + plotHeight, class: 'marker' }));
    // A label that would run past the right edge is written to the left of its line.
    const fits = x + 4 + marker.text.length * CHAR_WIDTH <= width;
    svg.append(node('text', {
      x: fits ? x + 4 : x - 4, y: pad.top + 10, class: 'marker-label', 'text-anchor': fits ? 'start' : 'end',
    }, marker.text));
  }
  if (series.length > 1) {
    series.forEach((s, index) => {
      const x = pad.left + index * 130;
      svg.append(node('rect', { x, y: height - 14, width: 10, height: 10, class: `bar ${s.className || ''}` }));
      svg.append(node('text', { x: x + 14, y: height - 5, class: 'axis' }, s.name));
    });
  }
  const caption = document.createElement('figcaption');
  caption.className = 'visually-hidden';
  caption.textContent = summary;
  figure.replaceChildren(svg, caption);
}
