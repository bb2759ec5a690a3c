// Show every server-rendered time in the reader's own time zone.
import { localTime } from './util.js';

export function localizeTimes(root = document) {
  for (const element of root.querySelectorAll('time[data-local]')) {
    element.textContent = localTime(element.dateTime);
    element.title = element.dateTime;
  }
}

localizeTimes();
