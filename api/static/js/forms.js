// Date fields in staff forms: shown in the browser's time zone, sent to the server in UTC.

function pad(number) {
  return String(number).padStart(2, '0');
}

function toLocalInput(iso) {
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) return '';
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())}T${pad(when.getHours())}:${pad(when.getMinutes())}`;
}

function toUtcInput(local) {
  const when = new Date(local); // a datetime-local value is read in the browser's zone
  if (Number.isNaN(when.getTime())) return local;
  return when.toISOString().slice(0, 16);
}

for (const form of document.querySelectorAll('form[data-local-times]')) {
  for (const input of form.querySelectorAll('input[type=datetime-local][data-utc]')) {
    if (!input.value && input.dataset.utc) input.value = toLocalInput(input.dataset.utc);
  }
  form.addEventListener('submit', () => {
    for (const input of form.querySelectorAll('input[type=datetime-local]')) {
      if (input.value) {
        // Send UTC through a hidden twin so the visible field keeps the reader's time.
        const twin = document.createElement('input');
        twin.type = 'hidden';
        twin.name = input.name;
        twin.value = toUtcInput(input.value);
        input.removeAttribute('name');
        form.append(twin);
      }
    }
    const offset = form.querySelector('input[name=tz_offset]');
    if (offset) offset.value = '0';
  });
}

const errors = document.getElementById('form-errors');
errors?.focus();
