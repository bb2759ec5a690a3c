// Log in without leaving the page on a wrong password; the form still works without this script.
import { api, safeNext, showError } from './util.js';

const form = document.getElementById('login-form');
const error = document.getElementById('login-error');

form?.addEventListener('submit', async (event) => {
  event.preventDefault();
  showError(error, '');
  const button = form.querySelector('button[type=submit]');
  button.disabled = true;
  try {
    await api('POST', '/api/login', { email: form.email.value, password: form.password.value });
    window.location.assign(safeNext(form.next.value));
  } catch (failure) {
    showError(error, failure.detail || String(failure));
    form.password.focus();
  } finally {
    button.disabled = false;
  }
});
