// Show every server-rendered time in the reader's own time zone: a full date, or a clock time
// where the page shows one (data-local="clock", as the step list does). Live scripts render new
// times through the same function, so a time reads the same before and after a reload.
import { clockTime, localTime } from './util.js';

export function localizeTime(element) {
  element.textContent = element.dataset.local === 'clock' ? clockTime(element.dateTime) : localTime(element.dateTime);
  element.title = element.dateTime;
}

export function localizeTimes(root = document) {
  for (const element of root.querySelectorAll('time[data-local]')) localizeTime(element);
}

localizeTimes();
