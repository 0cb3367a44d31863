# One helper per kind of target, so that adding a file is one line.

set(DAEDALUS_CXX_FLAGS -Wall -Wextra -Wno-unused-parameter)
if(DAEDALUS_NATIVE)
  list(APPEND DAEDALUS_CXX_FLAGS -march=native)
endif()
if(DAEDALUS_SANITIZE STREQUAL "address")
  add_compile_options(-fsanitize=address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
elseif(DAEDALUS_SANITIZE STREQUAL "thread")
  add_compile_options(-fsanitize=thread)
  add_link_options(-fsanitize=thread)
endif()
# OpenMP threads in tests: one under TSan, whose view of libgomp's (uninstrumented) barriers is
# empty, so every parallel loop would look racy.
if(DAEDALUS_SANITIZE STREQUAL "thread")
  set(DAEDALUS_TEST_OMP_THREADS 1)
else()
  set(DAEDALUS_TEST_OMP_THREADS 2)
endif()
if(DAEDALUS_FUZZ)
  # Coverage for libFuzzer everywhere; ASan and UBSan, every UBSan finding fatal. Only the
  # fuzz targets link libFuzzer's main (daedalus_fuzz).
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "DAEDALUS_FUZZ needs clang (scripts/fuzz.sh uses clang++-14)")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

# daedalus_library(NAME SRCS a.cc b.cc DEPS x y)
function(daedalus_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SRCS})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${DAEDALUS_CXX_FLAGS}>)
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# daedalus_test(NAME SRCS a_test.cc DEPS x y): a GoogleTest binary registered with CTest.
function(daedalus_test name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${DAEDALUS_CXX_FLAGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES TIMEOUT 600 ENVIRONMENT "OMP_NUM_THREADS=${DAEDALUS_TEST_OMP_THREADS}" LABELS unit)
  set_property(GLOBAL APPEND PROPERTY DAEDALUS_UNIT_TESTS ${name})
endfunction()

# daedalus_gpu_test(NAME SRCS a_test.cc DEPS x y): a GoogleTest binary of GPU tests. Its main
# (tests/kernels/cuda_test_main.cc) exits 77 without a GPU, which ctest reports as Skipped.
function(daedalus_gpu_test name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS} ${PROJECT_SOURCE_DIR}/tests/kernels/cuda_test_main.cc)
  target_compile_options(${name} PRIVATE ${DAEDALUS_CXX_FLAGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} daedalus_cuda_kernels GTest::gtest)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES TIMEOUT 600 SKIP_RETURN_CODE 77 ENVIRONMENT "OMP_NUM_THREADS=${DAEDALUS_TEST_OMP_THREADS}"
                       LABELS "unit;gpu")
  set_property(GLOBAL APPEND PROPERTY DAEDALUS_UNIT_TESTS ${name})
  set_property(GLOBAL APPEND PROPERTY DAEDALUS_GPU_TESTS ${name})
endfunction()

# daedalus_py_test(NAME SCRIPT path ARGS ...): an integration test driven by Debian's python3.
function(daedalus_py_test name)
  cmake_parse_arguments(ARG "" "SCRIPT" "ARGS" ${ARGN})
  add_test(NAME ${name}
           COMMAND /usr/bin/python3 ${PROJECT_SOURCE_DIR}/${ARG_SCRIPT}
                   --daedalus $<TARGET_FILE:daedalus> ${ARG_ARGS})
  set_tests_properties(${name} PROPERTIES TIMEOUT 900 ENVIRONMENT "OMP_NUM_THREADS=${DAEDALUS_TEST_OMP_THREADS}" LABELS integration)
endfunction()

# daedalus_venv_test(NAME SCRIPT path ARGS ...): an integration test that needs the PyPI
# packages of scripts/test-venv.sh (in the build folder); it skips, saying why, without them.
function(daedalus_venv_test name)
  cmake_parse_arguments(ARG "" "SCRIPT" "ARGS" ${ARGN})
  add_test(NAME ${name}
           COMMAND ${CMAKE_BINARY_DIR}/test-venv/bin/python ${PROJECT_SOURCE_DIR}/${ARG_SCRIPT}
                   --daedalus $<TARGET_FILE:daedalus> ${ARG_ARGS})
  set_tests_properties(${name} PROPERTIES TIMEOUT 900 ENVIRONMENT "OMP_NUM_THREADS=${DAEDALUS_TEST_OMP_THREADS}" SKIP_RETURN_CODE 77
                       LABELS integration)
endfunction()

# daedalus_fuzz(NAME DEPS x y): a libFuzzer target from tests/fuzz/NAME.cc, in build-fuzz/fuzz/.
function(daedalus_fuzz name)
  cmake_parse_arguments(ARG "" "" "DEPS" ${ARGN})
  add_executable(${name} ${name}.cc)
  target_compile_options(${name} PRIVATE ${DAEDALUS_CXX_FLAGS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS})
  target_link_options(${name} PRIVATE -fsanitize=fuzzer)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
  set_property(GLOBAL APPEND PROPERTY DAEDALUS_FUZZ_TARGETS ${name})
endfunction()
