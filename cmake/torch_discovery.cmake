# LibTorch and fmt discovery: Debian's LibTorch 1.13 (the default) or LibTorch 2.x from the PyPI
# torch wheel (README "Using PyTorch 2.x"; scripts/setup_torch2.sh makes such a wheel's venv).
#
# Sets TORCH_LIBRARIES (what the library links), QUANTPPL_TORCH_VERSION, QUANTPPL_TORCH_WHEEL_DIR
# (empty for Debian's), QUANTPPL_DEFAULT_PYTHON / QUANTPPL_DEFAULT_VENV (the Python whose torch
# matches the LibTorch: it writes the test fixtures and runs the reference and parity tests),
# defines the target fmt::fmt, and raises CMAKE_CXX_STANDARD to what the LibTorch headers need
# (17 for 1.13, 20 for 2.x).
#
# Why the wheel does not go through its own TorchConfig.cmake:
# - that config also links libtorch_cuda.so, whose CUDA libraries (cuSPARSELt, NVSHMEM, cuFile,
#   NCCL, cuDNN) a CPU machine lacks, and it needs a CUDA toolkit (nvcc) just to configure;
#   quantppl runs on the CPU, so it links libtorch_cpu.so + libc10.so and nothing else;
# - given <wheel>/torch/share/cmake as prefix, its find_library() calls search the system
#   directories first and silently pick Debian's libc10.so/libtorch.so (1.13) next to the wheel's
#   headers (2.x). Here every library is named by its full path inside the wheel.
# The wheel itself is never modified.
#
# fmt: the wheel's torch/include carries fmt 12 headers, which shadow Debian's fmt 9 headers for
# every target that sees torch's include directory (a system directory, /usr/include, is always
# searched last). Mixing fmt 12 headers with Debian's libfmt.so.9 fails to link (fmt::v12
# symbols), so with the wheel fmt::fmt is those bundled headers, header-only (FMT_HEADER_ONLY),
# and Debian's libfmt is not linked at all. With Debian's LibTorch it is Debian's fmt, as before.
#
# Selecting the wheel: -DQUANTPPL_TORCH_DIR=<venv>/lib/python3.X/site-packages/torch, or a
# CMAKE_PREFIX_PATH entry naming that directory (or its share/cmake).

set(QUANTPPL_TORCH_DIR "" CACHE PATH
  "torch/ directory of a PyPI torch wheel (LibTorch 2.x); empty: Debian's LibTorch via find_package(Torch)")

if(NOT QUANTPPL_TORCH_DIR)
  foreach(_prefix IN LISTS CMAKE_PREFIX_PATH)
    string(REGEX REPLACE "/share/cmake(/Torch)?/?$" "" _prefix "${_prefix}")
    # libtorch_python.so marks a Python wheel's torch/ (a standalone LibTorch has no Python binding).
    if(EXISTS "${_prefix}/lib/libtorch_python.so" AND EXISTS "${_prefix}/lib/libtorch_cpu.so")
      set(QUANTPPL_TORCH_DIR "${_prefix}" CACHE PATH "torch/ directory of a PyPI torch wheel" FORCE)
      break()
    endif()
  endforeach()
endif()

if(QUANTPPL_TORCH_DIR)
  get_filename_component(QUANTPPL_TORCH_WHEEL_DIR "${QUANTPPL_TORCH_DIR}" ABSOLUTE)
  set(_torch "${QUANTPPL_TORCH_WHEEL_DIR}")
  foreach(_f lib/libtorch_cpu.so lib/libc10.so include/torch/csrc/api/include/torch/torch.h version.py)
    if(NOT EXISTS "${_torch}/${_f}")
      message(FATAL_ERROR "QUANTPPL_TORCH_DIR=${_torch} is not a torch wheel's torch/ directory: "
        "${_f} is missing (expected <venv>/lib/python3.X/site-packages/torch)")
    endif()
  endforeach()
  file(STRINGS "${_torch}/version.py" _line REGEX "^__version__ *= *")
  string(REGEX MATCH "[0-9]+\\.[0-9]+\\.[0-9]+[^'\"]*" QUANTPPL_TORCH_VERSION "${_line}")
  if(QUANTPPL_TORCH_VERSION VERSION_LESS 2.0)
    message(FATAL_ERROR "QUANTPPL_TORCH_DIR=${_torch} holds torch ${QUANTPPL_TORCH_VERSION}; "
      "the wheel path is for torch 2.x (Debian's LibTorch 1.13 is the default: leave QUANTPPL_TORCH_DIR empty)")
  endif()

  # The definitions the wheel's torch_cpu target carries (USE_DISTRIBUTED, ...): headers use them,
  # so our translation units must see the same ones as the library was built with.
  set(_defs "")
  set(_targets "${_torch}/share/cmake/Caffe2/Caffe2Targets.cmake")
  if(EXISTS "${_targets}")
    file(READ "${_targets}" _text)
    if(_text MATCHES "set_target_properties\\(torch_cpu PROPERTIES[^)]*INTERFACE_COMPILE_DEFINITIONS \"([^\"]*)\"")
      set(_defs "${CMAKE_MATCH_1}")
    endif()
  endif()

  add_library(quantppl_libtorch INTERFACE IMPORTED)
  set_target_properties(quantppl_libtorch PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_torch}/include;${_torch}/include/torch/csrc/api/include"
    INTERFACE_COMPILE_DEFINITIONS "${_defs}"
    INTERFACE_LINK_LIBRARIES "${_torch}/lib/libtorch_cpu.so;${_torch}/lib/libc10.so")
  set(TORCH_LIBRARIES quantppl_libtorch)

  add_library(fmt::fmt INTERFACE IMPORTED)
  set_target_properties(fmt::fmt PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES "${_torch}/include"
    INTERFACE_COMPILE_DEFINITIONS "FMT_HEADER_ONLY=1")
  set(QUANTPPL_FMT_SOURCE "the wheel's bundled headers, header-only")

  # The venv the wheel is installed in (<venv>/lib/python3.X/site-packages/torch), when it is one.
  get_filename_component(_venv "${_torch}/../../../.." ABSOLUTE)
  if(EXISTS "${_venv}/pyvenv.cfg" AND EXISTS "${_venv}/bin/python")
    set(QUANTPPL_DEFAULT_VENV "${_venv}")
    set(QUANTPPL_DEFAULT_PYTHON "${_venv}/bin/python")
  else()
    message(WARNING "${_torch} is not inside a venv: set QUANTPPL_TEST_PYTHON and QUANTPPL_VENV to a "
      "Python with this torch ${QUANTPPL_TORCH_VERSION}, or the fixtures are written by another torch")
  endif()
  set(_where "from ${_torch}")
else()
  set(QUANTPPL_TORCH_WHEEL_DIR "")
  find_package(Torch REQUIRED)
  set(QUANTPPL_TORCH_VERSION "${Torch_VERSION}")
  find_package(fmt REQUIRED)
  set(QUANTPPL_FMT_SOURCE "fmt ${fmt_VERSION}")
  set(_where "(${Torch_DIR})")
endif()
if(NOT QUANTPPL_DEFAULT_PYTHON)
  # Debian's python3 has Debian's torch (python3-torch), the same version as Debian's LibTorch.
  set(QUANTPPL_DEFAULT_PYTHON /usr/bin/python3)
  set(QUANTPPL_DEFAULT_VENV "${PROJECT_BINARY_DIR}/venv")
endif()

# LibTorch 2.x's headers need C++20 (its TorchConfig.cmake asks for cxx_std_20); 1.13 builds as C++17.
if(QUANTPPL_TORCH_VERSION VERSION_GREATER_EQUAL 2.0 AND CMAKE_CXX_STANDARD LESS 20)
  set(CMAKE_CXX_STANDARD 20)
endif()
message(STATUS "quantppl: LibTorch ${QUANTPPL_TORCH_VERSION} ${_where}, C++${CMAKE_CXX_STANDARD}, "
  "fmt: ${QUANTPPL_FMT_SOURCE}, test Python: ${QUANTPPL_DEFAULT_PYTHON}")
