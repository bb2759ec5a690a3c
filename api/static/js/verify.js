// The receipt check page (/verify): read the receipt, hash the optional file here (SubtleCrypto),
// send only the receipt and the hash to the server's check, and show what it found.

import { csrfToken, detailOf } from './util.js';

const form = document.getElementById('verify-form');
const receiptInput = document.getElementById('receipt-file');
const fileInput = document.getElementById('submitted-file');
const verdict = document.getElementById('verdict');
const heading = document.getElementById('verdict-heading');
const summary = document.getElementById('verdict-summary');
const problems = document.getElementById('verdict-problems');
const facts = document.getElementById('verdict-facts');
const button = document.getElementById('verify-button');

function hex(buffer) {
  return Array.from(new Uint8Array(buffer), (byte) => byte.toString(16).padStart(2, '0')).join('');
}

async function sha256Of(file) {
  if (!window.crypto?.subtle) {
    throw new Error('This browser cannot compute SHA-256 on this page (it needs HTTPS). '
      + 'Check the receipt without the file, or use handin verify-receipt.');
  }
  return hex(await window.crypto.subtle.digest('SHA-256', await file.arrayBuffer()));
}

function show(valid, title, text, reasons, payload) {
  verdict.hidden = false;
  verdict.dataset.valid = String(valid);
  verdict.className = valid ? 'card verdict-valid' : 'card verdict-invalid error-box';
  heading.textContent = title;
  summary.textContent = text;
  problems.replaceChildren(...reasons.map((reason) => {
    const item = document.createElement('li');
    item.textContent = reason;
    return item;
  }));
  facts.replaceChildren();
  if (payload && typeof payload === 'object') {
    const rows = [
      ['Submission id', payload.submission_id],
      ['Student', payload.student && `${payload.student.name} <${payload.student.email}>`],
      ['Course', payload.course && `${payload.course.code} ${payload.course.title}`],
      ['Assignment', payload.assignment?.title],
      ['Attempt', payload.attempt],
      ['File', payload.file && `${payload.file.name} (${payload.file.size} bytes)`],
      ['SHA-256', payload.file?.sha256],
      ['Upload started', payload.upload_started_at || 'not recorded'],
      ['Accepted', payload.accepted_at],
      ['Submitted', payload.timing],
    ];
    for (const [name, value] of rows) {
      if (value === undefined || value === null) continue;
      const term = document.createElement('dt');
      term.textContent = name;
      const detail = document.createElement('dd');
      detail.textContent = String(value);
      facts.append(term, detail);
    }
  }
  heading.focus();
}

async function check(event) {
  event.preventDefault();
  const receiptFile = receiptInput.files[0];
  if (!receiptFile) {
    show(false, 'No receipt chosen', 'Choose the receipt file (handin-receipt-<id>.json) first.', [], null);
    receiptInput.focus();
    return;
  }
  button.disabled = true;
  try {
    let receipt;
    try {
      receipt = JSON.parse(await receiptFile.text());
    } catch (_) {
      show(false, 'Not valid', `${receiptFile.name} is not a handin receipt: it is not JSON.`, [], null);
      return;
    }
    const body = { receipt };
    const file = fileInput.files[0];
    if (file) {
      try {
        body.sha256 = await sha256Of(file);
        body.size = file.size;
      } catch (error) {
        show(false, 'Could not hash the file', error.message, [], null);
        return;
      }
    }
    let answer;
    try {
      answer = await fetch('/api/receipts/verify', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrfToken() },
        body: JSON.stringify(body),
      });
    } catch (_) {
      show(false, 'Could not check', detailOf(0, ''), [], null);
      return;
    }
    const text = await answer.text();
    if (!answer.ok) {
      show(false, 'Could not check', detailOf(answer.status, text), [], null);
      return;
    }
    const result = JSON.parse(text);
    show(result.valid, result.valid ? 'Valid receipt' : 'Not valid', result.summary,
      result.valid ? [] : result.problems, result.signature_valid ? result.payload : null);
  } finally {
    button.disabled = false;
  }
}

form.addEventListener('submit', check);
