/* The PostgreSQL relay's message framing, compiled (issue 18).

   broker/pg/codec.py (MessageReader.spans) is the reference: this is the same loop over
   (type byte, int32 length) headers, without returning to Python per message. A 1M-row
   SELECT is a million DataRows that the relay only frames and checks; in Python that loop
   was most of the broker's CPU per row. Built by pip from this source (setup.py, optional:
   without a compiler the Python loop runs).

   scan(buffer, skip, limit) -> (pos, spans, bad)
     spans: [(type, start, end), ...] of the complete messages from the start of buffer,
            messages of type `skip` framed and checked but not listed;
     pos:   where the first message not taken starts (incomplete, or bad);
     bad:   None, or the length field of the message at pos when it is below 4 or above
            `limit` (codec.py raises the ProtocolError, with the same text as its own loop). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

static PyObject *scan(PyObject *self, PyObject *args) {
    Py_buffer view;
    int skip;
    long long limit;
    if (!PyArg_ParseTuple(args, "y*iL", &view, &skip, &limit))
        return NULL;
    const unsigned char *p = (const unsigned char *)view.buf;
    Py_ssize_t n = view.len, pos = 0;
    PyObject *bad = NULL;
    PyObject *spans = PyList_New(0);
    if (spans == NULL)
        goto fail;
    while (n - pos >= 5) {
        int32_t length = (int32_t)(((uint32_t)p[pos + 1] << 24) | ((uint32_t)p[pos + 2] << 16) |
                                   ((uint32_t)p[pos + 3] << 8) | (uint32_t)p[pos + 4]);
        if (length < 4 || (long long)length > limit) {
            bad = PyLong_FromLong(length);
            if (bad == NULL)
                goto fail;
            break;
        }
        Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
        if (end > n)
            break;
        int kind = p[pos];
        if (kind != skip) {
            PyObject *span = Py_BuildValue("(inn)", kind, pos, end);
            if (span == NULL)
                goto fail;
            int appended = PyList_Append(spans, span);
            Py_DECREF(span);
            if (appended < 0)
                goto fail;
        }
        pos = end;
    }
    PyBuffer_Release(&view);
    if (bad == NULL) {
        bad = Py_None;
        Py_INCREF(bad);
    }
    return Py_BuildValue("(nNN)", pos, spans, bad);
fail:
    PyBuffer_Release(&view);
    Py_XDECREF(spans);
    Py_XDECREF(bad);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, "(pos, [(type, start, end), ...], bad length or None) of the messages in a buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "broker.pg._framing",
                                    "PostgreSQL message framing for the relay (reference: broker/pg/codec.py).", -1,
                                    methods};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 ""  /* setup.py defines it; jitgate.native refuses a build without it */
#endif

PyMODINIT_FUNC PyInit__framing(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddStringConstant(m, "SOURCE_SHA256", SOURCE_SHA256) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
